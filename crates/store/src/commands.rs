//! Query and result types of the `commands` section of [`Store`](crate::Store): direct commands to
//! devices (see `domain::command`).

use std::num::NonZeroU32;

use domain::{Command, CommandError, CommandOutcome, CommandState, Timestamp};

use crate::{StoreError, StoreResult};

/// A query for one page of a device's commands, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandQuery {
    /// Only commands in this state (all when `None`).
    pub state: Option<CommandState>,
    /// Only commands older than this `seq`: the cursor of the previous page.
    pub before_seq: Option<u64>,
    /// Page size, at most [`MAX_PAGE_SIZE`](crate::MAX_PAGE_SIZE) (stores clamp larger values).
    pub limit: NonZeroU32,
}

/// What [`Store::create_command`](crate::Store::create_command) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedCommand {
    /// The new command, or the one created earlier with the same idempotency key.
    pub command: Command,
    /// Whether it was created now (`false`: an idempotent retry).
    pub created: bool,
}

/// What the device or the server observed about a command (not an operator's change, so not
/// audited): [`Store::advance_command`](crate::Store::advance_command).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandProgress {
    /// It was published to the device (`queued` → `delivered`).
    Delivered,
    /// The device answered (`succeeded`, `failed` or `rejected`).
    Answered(CommandOutcome),
    /// The device did not answer in time (`delivered` → `timed_out`).
    TimedOut,
}

/// The outcome of an observed change: the command as stored afterwards, and whether it changed
/// (it does not when the change is not allowed from its state: a late answer to a `timed_out`
/// command, a second delivery).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandUpdate {
    /// The command after the call.
    pub command: Command,
    /// Whether the call changed it.
    pub changed: bool,
}

/// The command `progress` at `at` makes of `command`, or `None` when its state does not allow it.
/// Backends apply it with an expected-state check (the `UPDATE … WHERE state = <before>`).
pub fn command_after_progress(
    command: &Command,
    progress: &CommandProgress,
    at: Timestamp,
) -> Option<Command> {
    let mut next = command.clone();
    match progress {
        CommandProgress::Delivered => {
            command.state.check_transition(CommandState::Delivered).ok()?;
            next.state = CommandState::Delivered;
            next.delivered_at = Some(at);
        }
        CommandProgress::Answered(outcome) => {
            if !outcome.state.is_answer() {
                return None;
            }
            command.state.check_transition(outcome.state).ok()?;
            next.state = outcome.state;
            next.completed_at = Some(at);
            next.result.clone_from(&outcome.result);
            next.error.clone_from(&outcome.error);
        }
        CommandProgress::TimedOut => {
            command.state.check_transition(CommandState::TimedOut).ok()?;
            next.state = CommandState::TimedOut;
            next.completed_at = Some(at);
            next.error = Some(CommandError {
                code: "timed_out".to_owned(),
                message: format!(
                    "the device did not answer within {} s of delivery",
                    command.timeout_secs
                ),
            });
        }
    }
    Some(next)
}

/// The command an operator's cancel at `at` makes of `command`.
///
/// # Errors
/// [`StoreError::Conflict`] when it has ended.
pub fn command_after_cancel(command: &Command, at: Timestamp) -> StoreResult<Command> {
    command.state.check_transition(CommandState::Canceled).map_err(|_| {
        StoreError::Conflict(format!(
            "command {} is {}: only queued or delivered commands can be canceled",
            command.id,
            command.state.as_str()
        ))
    })?;
    let mut next = command.clone();
    next.state = CommandState::Canceled;
    next.completed_at = Some(at);
    next.error = Some(CommandError {
        code: "canceled".to_owned(),
        message: "an operator canceled the command".to_owned(),
    });
    Ok(next)
}

/// What the sweep at `now` makes of `command`: `expired` for a queued command whose delivery
/// window closed, `timed_out` for a delivered one past its timeout, `None` otherwise.
pub fn command_after_sweep(command: &Command, now: Timestamp) -> Option<Command> {
    match command.state {
        CommandState::Queued if command.deliver_by() <= now => {
            let mut next = command.clone();
            next.state = CommandState::Expired;
            next.completed_at = Some(now);
            next.error = Some(CommandError {
                code: "expired".to_owned(),
                message: "the device was not reachable within the delivery window".to_owned(),
            });
            Some(next)
        }
        CommandState::Delivered if command.answer_by().is_some_and(|by| by <= now) => {
            command_after_progress(command, &CommandProgress::TimedOut, now)
        }
        _ => None,
    }
}
