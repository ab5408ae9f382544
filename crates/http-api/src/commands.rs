//! Direct commands (RPC) to one device: `POST /api/v1/devices/{id}/commands`, their list, one
//! command, and cancel.
//!
//! The API stores commands; reaching the device and learning its answer is the server's job,
//! lent through [`CommandDispatcher`] (`AppState::with_command_dispatcher`): it says whether a
//! device is connected, publishes a command (and records it `delivered`), and wakes the requests
//! waiting for a command through its [`CommandWaiters`] when the device answers or the sweep ends
//! it. Without a dispatcher, creating a command answers 503 `gateway_unavailable`.
//!
//! Creating (like Azure IoT Hub direct methods and AWS IoT commands):
//! - A command without a delivery window (`ttl_secs` 0, the default) for a device that is not
//!   connected is refused with 409 `device_offline`, and nothing is stored.
//! - With a window, it is stored `queued` and delivered when the device connects, in order, or
//!   ends `expired` when the window closes.
//! - The `Idempotency-Key` header makes creation idempotent per device within
//!   `commands.idempotency_window_secs`: a retry returns the first command (and waits for it when
//!   `wait` is true); the same key with another name or payload is 409 `conflict`.
//! - `wait: true` holds the request until the command ends, at most `timeout_secs` after
//!   creation: 200 with an answer (`succeeded`, `failed` or `rejected`: the device's answer, not an
//!   HTTP failure), else 408 `command_timed_out` (or `command_expired`, or 409 `command_canceled`)
//!   with the command's members added to the problem. At most `commands.max_sync_waits` requests
//!   wait at once; another one is 503 `too_many_waits` and stores nothing.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use domain::command::add_secs;
use domain::{
    Command, CommandId, CommandName, CommandState, DeviceId, IdempotencyKey, NewCommand, Timestamp,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use store::{CommandQuery, Page, StoreError};
use tokio::sync::oneshot;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::{Caller, Operator, Viewer};
use crate::error::{ApiError, Problem};
use crate::extract::{
    DevicePath, JsonBody, RawQuery, device_id, parse_limit, path_params, set_once,
    unknown_parameter,
};
use crate::paging::page_limit;

/// The header that makes creating a command idempotent.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// The limits of commands, from the server's `[commands]` configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLimits {
    /// `timeout_secs` when the request gives none (default 30).
    pub default_timeout_secs: u32,
    /// Largest `timeout_secs` (default 300).
    pub max_timeout_secs: u32,
    /// Largest `ttl_secs` (default 7 days).
    pub max_ttl_secs: u32,
    /// Largest payload, in bytes of compact JSON (default 8 KiB).
    pub max_payload_bytes: usize,
    /// Largest result a device may return, in bytes of compact JSON (default 8 KiB).
    pub max_result_bytes: usize,
    /// How long an idempotency key is remembered (default 24 h).
    pub idempotency_window_secs: u32,
}

impl Default for CommandLimits {
    fn default() -> Self {
        Self {
            default_timeout_secs: 30,
            max_timeout_secs: 300,
            max_ttl_secs: 7 * 86_400,
            max_payload_bytes: 8 * 1024,
            max_result_bytes: 8 * 1024,
            idempotency_window_secs: 86_400,
        }
    }
}

/// Why a command could not be handed to the device.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The MQTT gateway is not running (shutting down).
    #[error("the MQTT gateway is not available")]
    Unavailable,
    /// Recording the delivery failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the API needs from the server to reach devices with commands (see the module docs).
#[async_trait]
pub trait CommandDispatcher: Send + Sync + 'static {
    /// The limits requests are checked against.
    fn limits(&self) -> &CommandLimits;

    /// The requests waiting for commands to end.
    fn waiters(&self) -> &Arc<CommandWaiters>;

    /// Whether `device` is connected now.
    async fn is_online(&self, device: &DeviceId) -> Result<bool, DispatchError>;

    /// Publishes `command` to its device (QoS 1) and records it `delivered`; returns the command
    /// as stored afterwards.
    async fn deliver(&self, command: &Command) -> Result<Command, DispatchError>;
}

/// The requests waiting for a command to end, bounded; shared by the API (which waits) and the
/// server (which wakes).
pub struct CommandWaiters {
    max: usize,
    inner: Mutex<WaitersInner>,
}

#[derive(Default)]
struct WaitersInner {
    next: u64,
    count: usize,
    by_command: HashMap<CommandId, Vec<(u64, oneshot::Sender<Command>)>>,
}

impl fmt::Debug for CommandWaiters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandWaiters")
            .field("max", &self.max)
            .field("waiting", &self.waiting())
            .finish()
    }
}

impl CommandWaiters {
    /// A registry allowing `max` waits at once.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self { max, inner: Mutex::new(WaitersInner::default()) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WaitersInner> {
        // A panic while holding the lock leaves consistent data (every step is one insert or
        // remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many requests wait now.
    pub fn waiting(&self) -> usize {
        self.lock().count
    }

    /// Registers a wait for command `id`; `None` when `max` requests wait already. The wait ends
    /// when the returned value is dropped.
    pub fn wait(self: &Arc<Self>, id: &CommandId) -> Option<CommandWait> {
        let mut inner = self.lock();
        if inner.count >= self.max {
            return None;
        }
        inner.count += 1;
        inner.next += 1;
        let token = inner.next;
        let (tx, rx) = oneshot::channel();
        inner.by_command.entry(id.clone()).or_default().push((token, tx));
        Some(CommandWait { rx, registry: Arc::clone(self), id: id.clone(), token })
    }

    /// Wakes the requests waiting for `command` when it has ended. Never blocks.
    pub fn notify(&self, command: &Command) {
        if !command.state.is_terminal() {
            return;
        }
        let waiting = {
            let mut inner = self.lock();
            let waiting = inner.by_command.remove(&command.id).unwrap_or_default();
            inner.count -= waiting.len();
            waiting
        };
        for (_, tx) in waiting {
            // The request may have given up meanwhile.
            let _ = tx.send(command.clone());
        }
    }

    fn forget(&self, id: &CommandId, token: u64) {
        let mut inner = self.lock();
        let Some(list) = inner.by_command.get_mut(id) else { return };
        let before = list.len();
        list.retain(|(t, _)| *t != token);
        let removed = before - list.len();
        if list.is_empty() {
            inner.by_command.remove(id);
        }
        inner.count -= removed;
    }
}

/// One request's wait for a command to end.
#[derive(Debug)]
pub struct CommandWait {
    rx: oneshot::Receiver<Command>,
    registry: Arc<CommandWaiters>,
    id: CommandId,
    token: u64,
}

impl CommandWait {
    /// The command once it ended, or `None` when `timeout` passed first.
    pub async fn until(&mut self, timeout: Duration) -> Option<Command> {
        tokio::time::timeout(timeout, &mut self.rx).await.ok().and_then(Result::ok)
    }
}

impl Drop for CommandWait {
    fn drop(&mut self) {
        self.registry.forget(&self.id, self.token);
    }
}

/// A command's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = CommandState)]
pub(crate) enum CommandStateDto {
    /// Stored, not yet handed to the device.
    Queued,
    /// Published to the device; waiting for its answer.
    Delivered,
    /// The device did it.
    Succeeded,
    /// The device tried and failed.
    Failed,
    /// The device refused it.
    Rejected,
    /// The device did not answer within `timeout_secs` of delivery.
    TimedOut,
    /// The device was not reachable within the delivery window.
    Expired,
    /// An operator canceled it.
    Canceled,
}

impl From<CommandState> for CommandStateDto {
    fn from(s: CommandState) -> Self {
        match s {
            CommandState::Queued => Self::Queued,
            CommandState::Delivered => Self::Delivered,
            CommandState::Succeeded => Self::Succeeded,
            CommandState::Failed => Self::Failed,
            CommandState::Rejected => Self::Rejected,
            CommandState::TimedOut => Self::TimedOut,
            CommandState::Expired => Self::Expired,
            CommandState::Canceled => Self::Canceled,
        }
    }
}

/// Why a command did not succeed.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = CommandError)]
pub(crate) struct CommandErrorDto {
    /// A stable code: the device's (`failed`, `unknown_command`, …) or Herd's (`timed_out`,
    /// `expired`, `canceled`).
    code: String,
    /// Words for people.
    message: String,
}

/// A command as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DeviceCommand)]
pub(crate) struct CommandDto {
    /// Its id (`cmd_` and 20 hex digits, sortable by creation time).
    #[schema(example = "cmd_019a3b5c7d9e1a2b3c4d")]
    id: String,
    /// The device.
    device_id: String,
    /// What to do.
    #[schema(example = "reboot")]
    name: String,
    /// Arguments, `null` when none.
    payload: Value,
    /// Where it is in its life.
    state: CommandStateDto,
    /// When it was created (RFC 3339).
    created_at: String,
    /// Who created it.
    created_by: String,
    /// Seconds the device has to answer once delivered.
    timeout_secs: u32,
    /// End of the delivery window (RFC 3339); `null`: deliver at once or never.
    expires_at: Option<String>,
    /// When it was delivered (RFC 3339).
    delivered_at: Option<String>,
    /// When it ended (RFC 3339).
    completed_at: Option<String>,
    /// What the device returned.
    result: Option<Value>,
    /// Why it did not succeed.
    error: Option<CommandErrorDto>,
    /// The `Idempotency-Key` it was created with.
    idempotency_key: Option<String>,
    /// Its position among the device's commands, from 1 (the delivery order).
    seq: u64,
}

impl From<&Command> for CommandDto {
    fn from(c: &Command) -> Self {
        Self {
            id: c.id.as_str().to_owned(),
            device_id: c.device_id.as_str().to_owned(),
            name: c.name.as_str().to_owned(),
            payload: c.payload.clone(),
            state: c.state.into(),
            created_at: c.created_at.to_rfc3339(),
            created_by: c.created_by.clone(),
            timeout_secs: c.timeout_secs,
            expires_at: c.expires_at.map(Timestamp::to_rfc3339),
            delivered_at: c.delivered_at.map(Timestamp::to_rfc3339),
            completed_at: c.completed_at.map(Timestamp::to_rfc3339),
            result: c.result.clone(),
            error: c
                .error
                .as_ref()
                .map(|e| CommandErrorDto { code: e.code.clone(), message: e.message.clone() }),
            idempotency_key: c.idempotency_key.as_ref().map(|k| k.as_str().to_owned()),
            seq: c.seq,
        }
    }
}

/// A page of a device's commands, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CommandList {
    /// The commands.
    items: Vec<CommandDto>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    next_cursor: Option<String>,
}

/// A new command. Send the `Idempotency-Key` header to make retries safe.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateCommand {
    /// What to do: 1 to 64 characters of `[A-Za-z0-9_.-]`.
    #[schema(example = "reboot")]
    name: String,
    /// Arguments (any JSON value), at most `commands.max_payload_bytes`.
    #[serde(default)]
    payload: Option<Value>,
    /// Seconds the device has to answer once delivered (default `commands.default_timeout_secs`,
    /// 1 to `commands.max_timeout_secs`).
    timeout_secs: Option<u32>,
    /// Seconds the command may wait for an offline device (default 0: deliver now or refuse with
    /// `device_offline`; at most `commands.max_ttl_secs`).
    ttl_secs: Option<u32>,
    /// Whether to wait for the device's answer (default false).
    wait: Option<bool>,
}

/// A device id and one of its commands' ids from the path: a bad device id is 400
/// `invalid_device_id`, an id no command can have is 404 `command_not_found`.
#[derive(Debug, Clone)]
pub(crate) struct CommandPath(pub(crate) DeviceId, pub(crate) CommandId);

impl<S: Send + Sync> FromRequestParts<S> for CommandPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let (id, command): (String, String) =
            path_params(parts, state).await?.map_err(ApiError::InvalidDeviceId)?;
        let id = device_id(id)?;
        let command =
            CommandId::new(command.clone()).map_err(|_| ApiError::CommandNotFound(command))?;
        Ok(Self(id, command))
    }
}

fn dispatcher(state: &AppState) -> Result<&dyn CommandDispatcher, ApiError> {
    state.command_dispatcher().ok_or(ApiError::GatewayUnavailable)
}

fn dispatch_error(e: DispatchError) -> ApiError {
    match e {
        DispatchError::Unavailable => ApiError::GatewayUnavailable,
        DispatchError::Store(e) => e.into(),
    }
}

fn location(c: &Command) -> String {
    format!("/api/v1/devices/{}/commands/{}", c.device_id, c.id)
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY_HEADER).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(ApiError::ValidationFailed("give one Idempotency-Key header".to_owned()));
    }
    let text = value.to_str().map_err(|_| {
        ApiError::ValidationFailed("Idempotency-Key must be printable ASCII".to_owned())
    })?;
    Ok(Some(IdempotencyKey::new(text)?))
}

/// Send a command to a device.
///
/// Without `ttl_secs` the device must be connected (409 `device_offline` otherwise, nothing
/// stored); with it, the command waits up to that long for the device and is delivered, in order,
/// when it connects. With `wait: true` the request holds until the device answers or
/// `timeout_secs` pass. The `Idempotency-Key` header makes retries return the first command.
#[utoipa::path(
    post,
    path = "/api/v1/devices/{id}/commands",
    tag = "commands",
    params(
        ("id" = String, Path, description = "Device id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes creation idempotent per device within `commands.idempotency_window_secs` (1 to 128 printable ASCII characters)"),
    ),
    request_body = CreateCommand,
    security(("bearer" = ["operator"])),
    responses(
        (status = 200, description = "`wait`: the device answered (`succeeded`, `failed` or `rejected`)", body = CommandDto),
        (status = 202, description = "Stored (`queued`) or sent (`delivered`); `Location` holds its URL", body = CommandDto),
        (status = 400, description = "Malformed body or invalid device id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`device_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "`wait`: `command_timed_out` or `command_expired`; the command's members are added to the problem", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`device_offline` (no `ttl_secs`), `conflict` (idempotency key reused with another name or payload), `command_canceled` (`wait`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: name, limits, payload size", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`gateway_unavailable`, `too_many_waits`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn create_command(
    caller: Caller<Operator>,
    State(state): State<AppState>,
    DevicePath(id): DevicePath,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateCommand>,
) -> Result<Response, ApiError> {
    let dispatcher = dispatcher(&state)?;
    let limits = dispatcher.limits();
    let name = CommandName::new(body.name)?;
    let payload = body.payload.unwrap_or(Value::Null);
    domain::command::check_json_size("payload", &payload, limits.max_payload_bytes)?;
    let timeout_secs = body.timeout_secs.unwrap_or(limits.default_timeout_secs);
    if !(1..=limits.max_timeout_secs).contains(&timeout_secs) {
        return Err(ApiError::ValidationFailed(format!(
            "timeout_secs must be between 1 and {}, got {timeout_secs}",
            limits.max_timeout_secs
        )));
    }
    let ttl_secs = body.ttl_secs.unwrap_or(0);
    if ttl_secs > limits.max_ttl_secs {
        return Err(ApiError::ValidationFailed(format!(
            "ttl_secs must be at most {}, got {ttl_secs}",
            limits.max_ttl_secs
        )));
    }
    let key = idempotency_key(&headers)?;
    let m = state.mutation_by(&caller.token);
    let command_id = CommandId::generate(m.at, rand::random());
    // Registered before anything is stored, so that a refused wait stores nothing and an answer
    // arriving right after delivery is not missed.
    let mut wait = if body.wait.unwrap_or(false) {
        Some(dispatcher.waiters().wait(&command_id).ok_or(ApiError::TooManyWaits)?)
    } else {
        None
    };
    let online = dispatcher.is_online(&id).await.map_err(dispatch_error)?;
    if !online && ttl_secs == 0 {
        // An idempotent retry of a command that exists is answered below even when offline.
        let retried = match &key {
            Some(key) => find_by_key(&state, &id, key, limits).await?,
            None => None,
        };
        if retried.is_none() {
            if state.store().device(&id).await?.is_none() {
                return Err(ApiError::DeviceNotFound(id.to_string()));
            }
            return Err(ApiError::DeviceOffline(format!(
                "device {id} is not connected; send with ttl_secs to queue the command until it is"
            )));
        }
    }
    let new = NewCommand {
        id: command_id,
        device_id: id.clone(),
        name,
        payload,
        timeout_secs,
        expires_at: (ttl_secs > 0).then(|| add_secs(m.at, ttl_secs)),
        idempotency_key: key,
    };
    let since = Timestamp::from_millis(
        m.at.millis().saturating_sub(i64::from(limits.idempotency_window_secs) * 1000),
    );
    let created = state.store().create_command(&new, since, &m).await?;
    let mut command = created.command;
    if created.created {
        if online {
            command = dispatcher.deliver(&command).await.map_err(dispatch_error)?;
        }
    } else if wait.is_some() {
        // A retry waits for the first command instead.
        drop(wait.take());
        wait = Some(dispatcher.waiters().wait(&command.id).ok_or(ApiError::TooManyWaits)?);
    }
    let Some(mut wait) = wait else {
        return Ok(accepted(&command));
    };
    if !command.state.is_terminal() {
        let deadline = add_secs(command.created_at, command.timeout_secs);
        let left =
            u64::try_from(deadline.millis().saturating_sub(state.now().millis())).unwrap_or(0);
        if let Some(ended) = wait.until(Duration::from_millis(left)).await {
            command = ended;
        } else {
            command = time_out(&state, dispatcher, &command).await?;
        }
    }
    drop(wait);
    finished(&command)
}

/// The command an idempotent retry would return, if any.
async fn find_by_key(
    state: &AppState,
    device: &DeviceId,
    key: &IdempotencyKey,
    limits: &CommandLimits,
) -> Result<Option<Command>, ApiError> {
    let since =
        state.now().millis().saturating_sub(i64::from(limits.idempotency_window_secs) * 1000);
    let mut query =
        CommandQuery { state: None, before_seq: None, limit: page_limit(store::MAX_PAGE_SIZE) };
    loop {
        let page = state.store().list_commands(device, &query).await?;
        for c in &page.items {
            if c.created_at.millis() < since {
                return Ok(None);
            }
            if c.idempotency_key.as_ref() == Some(key) {
                return Ok(Some(c.clone()));
            }
        }
        match page.items.last() {
            Some(last) if page.has_more => query.before_seq = Some(last.seq),
            _ => return Ok(None),
        }
    }
}

/// A synchronous wait ran out: a delivered command times out now (unless it ended meanwhile);
/// the command as it stands comes back.
async fn time_out(
    state: &AppState,
    dispatcher: &dyn CommandDispatcher,
    command: &Command,
) -> Result<Command, ApiError> {
    let update = state
        .store()
        .advance_command(
            &command.device_id,
            &command.id,
            &store::CommandProgress::TimedOut,
            state.now(),
        )
        .await?;
    if update.changed {
        dispatcher.waiters().notify(&update.command);
    }
    Ok(update.command)
}

fn accepted(command: &Command) -> Response {
    (StatusCode::ACCEPTED, [(header::LOCATION, location(command))], Json(CommandDto::from(command)))
        .into_response()
}

/// The answer of a synchronous request for the command it waited for.
fn finished(command: &Command) -> Result<Response, ApiError> {
    if command.state.is_answer() {
        return Ok((StatusCode::OK, Json(CommandDto::from(command))).into_response());
    }
    let detail = match command.state {
        CommandState::Expired => format!(
            "command {} expired: the device was not reachable within its delivery window",
            command.id
        ),
        CommandState::Canceled => format!("command {} was canceled", command.id),
        CommandState::TimedOut => format!(
            "command {} timed out: the device did not answer within {} s",
            command.id, command.timeout_secs
        ),
        _ => format!(
            "command {} is still {} after {} s; poll it at its URL",
            command.id,
            command.state.as_str(),
            command.timeout_secs
        ),
    };
    let Ok(Value::Object(members)) = serde_json::to_value(CommandDto::from(command)) else {
        return Err(ApiError::internal("a command always serializes to an object"));
    };
    Err(ApiError::CommandUnanswered { state: command.state, detail, command: Box::new(members) })
}

/// Query parameters of a device's command list.
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct CommandListParams {
    /// Only commands in this state.
    #[param(value_type = Option<CommandStateDto>)]
    state: Option<String>,
    /// Page size, 1 to 1000 (default from the server's configuration, normally 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

const COMMAND_LIST_PARAMS: &[&str] = &["state", "limit", "cursor"];

const CURSOR_PREFIX: &str = "c1";

fn encode_cursor(seq: u64) -> String {
    format!("{CURSOR_PREFIX}{}", hex::encode(seq.to_string()))
}

fn decode_cursor(cursor: &str) -> Result<u64, ApiError> {
    cursor
        .strip_prefix(CURSOR_PREFIX)
        .and_then(|h| hex::decode(h).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.parse().ok())
        .ok_or(ApiError::InvalidCursor)
}

/// List a device's commands, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/commands",
    tag = "commands",
    params(("id" = String, Path, description = "Device id"), CommandListParams),
    security(("bearer" = ["viewer"])),
    responses(
        (status = 200, description = "One page of commands", body = CommandList),
        (status = 400, description = "Invalid device id, query or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`device_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: bad state or limit", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn list_commands(
    _caller: Caller<Viewer>,
    State(state): State<AppState>,
    DevicePath(id): DevicePath,
    query: RawQuery,
) -> Result<Json<CommandList>, ApiError> {
    let mut params = CommandListParams::default();
    let mut raw_limit = None;
    for (key, value) in query.pairs() {
        match key.as_str() {
            "state" => set_once(&mut params.state, &key, value)?,
            "limit" => set_once(&mut raw_limit, &key, value)?,
            "cursor" => set_once(&mut params.cursor, &key, value)?,
            _ => return Err(unknown_parameter(&key, COMMAND_LIST_PARAMS)),
        }
    }
    params.limit = Some(parse_limit(raw_limit.as_deref(), state.config().page_size())?);
    let limit = params.limit.unwrap_or(1);
    let state_filter = params.state.as_deref().map(str::parse::<CommandState>).transpose()?;
    let before_seq = params.cursor.as_deref().map(decode_cursor).transpose()?;
    if state.store().device(&id).await?.is_none() {
        return Err(ApiError::DeviceNotFound(id.to_string()));
    }
    let page: Page<Command> = state
        .store()
        .list_commands(
            &id,
            &CommandQuery { state: state_filter, before_seq, limit: page_limit(limit) },
        )
        .await?;
    let next_cursor =
        if page.has_more { page.items.last().map(|c| encode_cursor(c.seq)) } else { None };
    Ok(Json(CommandList { items: page.items.iter().map(CommandDto::from).collect(), next_cursor }))
}

/// One of a device's commands.
#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/commands/{command_id}",
    tag = "commands",
    params(
        ("id" = String, Path, description = "Device id"),
        ("command_id" = String, Path, description = "Command id"),
    ),
    security(("bearer" = ["viewer"])),
    responses(
        (status = 200, description = "The command", body = CommandDto),
        (status = 400, description = "Invalid device id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`command_not_found`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn get_command(
    _caller: Caller<Viewer>,
    State(state): State<AppState>,
    CommandPath(id, command_id): CommandPath,
) -> Result<Json<CommandDto>, ApiError> {
    let command = state
        .store()
        .command(&id, &command_id)
        .await?
        .ok_or_else(|| ApiError::CommandNotFound(command_id.to_string()))?;
    Ok(Json(CommandDto::from(&command)))
}

/// Cancel a command that has not ended (`queued` or `delivered`).
///
/// A delivered command may still be carried out by the device; its answer is then ignored.
#[utoipa::path(
    post,
    path = "/api/v1/devices/{id}/commands/{command_id}/cancel",
    tag = "commands",
    params(
        ("id" = String, Path, description = "Device id"),
        ("command_id" = String, Path, description = "Command id"),
    ),
    security(("bearer" = ["operator"])),
    responses(
        (status = 200, description = "Canceled", body = CommandDto),
        (status = 400, description = "Invalid device id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`command_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: the command has ended", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn cancel_command(
    caller: Caller<Operator>,
    State(state): State<AppState>,
    CommandPath(id, command_id): CommandPath,
) -> Result<Json<CommandDto>, ApiError> {
    let m = state.mutation_by(&caller.token);
    let command = state.store().cancel_command(&id, &command_id, &m).await?;
    if let Some(dispatcher) = state.command_dispatcher() {
        dispatcher.waiters().notify(&command);
    }
    Ok(Json(CommandDto::from(&command)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command_id(n: u8) -> CommandId {
        CommandId::generate(Timestamp::from_millis(1), [n; 4])
    }

    #[test]
    fn waits_are_bounded_and_released_on_drop() {
        let waiters = CommandWaiters::new(2);
        let a = waiters.wait(&command_id(1)).unwrap();
        let b = waiters.wait(&command_id(1)).unwrap();
        assert!(waiters.wait(&command_id(2)).is_none());
        drop(a);
        assert_eq!(waiters.waiting(), 1);
        let c = waiters.wait(&command_id(2)).unwrap();
        drop((b, c));
        assert_eq!(waiters.waiting(), 0);
    }

    #[test]
    fn cursors_round_trip() {
        assert_eq!(decode_cursor(&encode_cursor(42)).unwrap(), 42);
        assert!(decode_cursor("c1zz").is_err());
    }
}
