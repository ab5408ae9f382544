//! The mailbox from the broker task to one connection: bounded messages plus one control notice.
//!
//! It replaces a pair of `tokio::sync::mpsc` channels because of what an idle connection costs: a tokio
//! channel allocates its first block of slots (32 × the message size, about 2 KiB for [`Outbound`])
//! when it is created, and a connection needs two. This mailbox is one small allocation; its queue
//! grows only while messages wait and is released when it empties after a burst.
//!
//! The broker task holds the two senders ([`MessageSender`], [`ControlSender`]) in its `ConnLink` and
//! never waits on them: [`MessageSender::try_send_within`] fails with the same [`TrySendError`] as a tokio
//! channel. The connection task holds the [`Receiver`]; [`Receiver::recv`] returns the control notice
//! first, so a takeover or an administrative disconnect is never stuck behind messages.
//!
//! [`Outbound`]: crate::session::Outbound

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};

pub(crate) use tokio::sync::mpsc::error::TrySendError;

use crate::broker::Control;

/// A queue larger than this is released when it empties, so a burst does not pin memory.
const QUEUE_KEEP: usize = 16;

/// Creates a mailbox; its bound is given with each message ([`MessageSender::try_send_within`]).
pub(crate) fn mailbox<T>() -> (MessageSender<T>, ControlSender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            control: None,
            waker: None,
            closed: false,
            senders: 2,
        }),
    });
    (
        MessageSender { shared: Arc::clone(&shared) },
        ControlSender { shared: Arc::clone(&shared) },
        Receiver { shared },
    )
}

#[derive(Debug)]
struct Shared<T> {
    state: Mutex<State<T>>,
}

#[derive(Debug)]
struct State<T> {
    queue: VecDeque<T>,
    control: Option<Control>,
    /// The receiver's waker while it waits.
    waker: Option<Waker>,
    /// Set by the receiver: no more messages are accepted.
    closed: bool,
    /// Live senders; at 0 the receiver sees the end.
    senders: u8,
}

impl<T> Shared<T> {
    /// Locks the state. Nothing panics while holding the lock, so a poisoned lock still holds
    /// consistent state and is used as is.
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn sender_dropped(&self) {
        let waker = {
            let mut state = self.lock();
            state.senders = state.senders.saturating_sub(1);
            if state.senders == 0 { state.waker.take() } else { None }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The broker's side for messages.
#[derive(Debug)]
pub(crate) struct MessageSender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> MessageSender<T> {
    /// Queues `value` unless `room` messages already wait or the mailbox is closed; never waits.
    /// The broker gives QoS 1 and 2 messages more room than QoS 0 ones.
    pub(crate) fn try_send_within(&self, value: T, room: usize) -> Result<(), TrySendError<T>> {
        let waker = {
            let mut state = self.shared.lock();
            if state.closed {
                return Err(TrySendError::Closed(value));
            }
            if state.queue.len() >= room {
                return Err(TrySendError::Full(value));
            }
            state.queue.push_back(value);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }
}

impl<T> Drop for MessageSender<T> {
    fn drop(&mut self) {
        self.shared.sender_dropped();
    }
}

/// The broker's side for control notices.
#[derive(Debug)]
pub(crate) struct ControlSender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> ControlSender<T> {
    /// Leaves `control` for the connection unless a notice is already waiting (the connection is then
    /// ending anyway) or the mailbox is closed.
    pub(crate) fn try_send(&self, control: Control) -> Result<(), TrySendError<Control>> {
        let waker = {
            let mut state = self.shared.lock();
            if state.closed {
                return Err(TrySendError::Closed(control));
            }
            if state.control.is_some() {
                return Err(TrySendError::Full(control));
            }
            state.control = Some(control);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }
}

impl<T> Drop for ControlSender<T> {
    fn drop(&mut self) {
        self.shared.sender_dropped();
    }
}

/// What the connection takes out of its mailbox.
#[derive(Debug)]
pub(crate) enum Received<T> {
    Control(Control),
    Message(T),
    /// Every sender is gone: the broker task has stopped.
    Closed,
}

/// The connection's side.
#[derive(Debug)]
pub(crate) struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Receiver<T> {
    /// Waits for the control notice (first) or the next message.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: nothing is taken out of the mailbox unless this returns.
    pub(crate) async fn recv(&mut self) -> Received<T> {
        poll_fn(|cx| {
            let mut state = self.shared.lock();
            if let Some(control) = state.control.take() {
                return Poll::Ready(Received::Control(control));
            }
            if let Some(value) = Self::pop(&mut state) {
                return Poll::Ready(Received::Message(value));
            }
            if state.senders == 0 {
                return Poll::Ready(Received::Closed);
            }
            match &mut state.waker {
                Some(waker) => waker.clone_from(cx.waker()),
                None => state.waker = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }

    /// The next message, if one is waiting (control notices are left for [`Receiver::recv`]).
    pub(crate) fn try_recv(&mut self) -> Option<T> {
        Self::pop(&mut self.shared.lock())
    }

    /// Stops accepting messages; those already queued can still be taken with
    /// [`Receiver::try_recv`].
    pub(crate) fn close(&mut self) {
        self.shared.lock().closed = true;
    }

    fn pop(state: &mut State<T>) -> Option<T> {
        let value = state.queue.pop_front();
        if state.queue.is_empty() && state.queue.capacity() > QUEUE_KEEP {
            state.queue = VecDeque::new();
        }
        value
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.closed = true;
        state.waker = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn control_overtakes_messages_and_capacity_is_enforced() {
        let (tx, control, mut rx) = mailbox::<u32>();
        tx.try_send_within(1, 2).unwrap();
        tx.try_send_within(2, 2).unwrap();
        assert!(matches!(tx.try_send_within(3, 2), Err(TrySendError::Full(3))));
        control.try_send(Control::TakenOver).unwrap();
        assert!(control.try_send(Control::TakenOver).is_err());
        assert!(matches!(rx.recv().await, Received::Control(Control::TakenOver)));
        assert!(matches!(rx.recv().await, Received::Message(1)));
        assert_eq!(rx.try_recv(), Some(2));
        assert_eq!(rx.try_recv(), None);
    }

    #[tokio::test]
    async fn closing_refuses_new_messages_and_keeps_queued_ones() {
        let (tx, _control, mut rx) = mailbox::<u32>();
        tx.try_send_within(1, 4).unwrap();
        rx.close();
        assert!(matches!(tx.try_send_within(2, 4), Err(TrySendError::Closed(2))));
        assert_eq!(rx.try_recv(), Some(1));
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_for_a_message_and_for_the_end() {
        let (tx, control, mut rx) = mailbox::<u32>();
        let waiter = tokio::spawn(async move {
            let first = rx.recv().await;
            let second = rx.recv().await;
            (matches!(first, Received::Message(7)), matches!(second, Received::Closed))
        });
        tokio::task::yield_now().await;
        tx.try_send_within(7, 4).unwrap();
        drop(tx);
        drop(control);
        assert_eq!(waiter.await.unwrap(), (true, true));
    }
}
