//! Fleet jobs on the device side (`devices/{id}/jobs/…`, see `docs/device-protocol.md`, *Jobs*).
//!
//! A device subscribes to [`SUBSCRIPTION`] (`jobs/+`, at QoS 1, through
//! [`crate::DeviceConfig::subscriptions`]) and reads its inbox ([`crate::Device::spawn_with_inbox`]):
//! [`parse`] turns each message into a [`JobMessage`]: the pending list (`notify`), an execution
//! document to run (when the execution starts), or an answer. After each connection it asks for
//! what is pending with [`request_pending`] (the answer holds the documents of the executions in
//! progress, so a device that restarted picks up its work); [`report`] sends progress and the
//! result, with status details.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::device::DeviceHandle;
use crate::error::Stopped;
use crate::message::{Channel, Incoming};

/// The subscription (below `devices/{id}/`) that receives job documents, notifications and
/// answers.
pub const SUBSCRIPTION: &str = "jobs/+";

/// What a job asks the device to do.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOperation {
    /// Run a command.
    Command {
        /// The command's name.
        name: String,
        /// Its payload.
        payload: Value,
        /// How long it may take, in seconds.
        timeout_secs: u64,
    },
    /// A desired-state patch (applied by Herd to the twin; informational here).
    DesiredPatch(Value),
}

/// An execution document: what to run for one job, and which attempt it is.
#[derive(Debug, Clone, PartialEq)]
pub struct JobDocument {
    /// The job.
    pub job_id: String,
    /// The operation.
    pub operation: JobOperation,
    /// From 1; a retry is a new attempt.
    pub attempt: u64,
    /// The execution's version (for `expected_version`).
    pub version: u64,
    /// The status details last reported.
    pub status_details: Value,
}

/// One pending execution, as listed by `notify` and `get`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingJob {
    /// The job.
    pub job_id: String,
    /// `queued` or `in_progress`.
    pub state: String,
    /// Its attempt.
    pub attempt: u64,
    /// Its version.
    pub version: u64,
}

/// A job message from the server.
#[derive(Debug, Clone, PartialEq)]
pub enum JobMessage {
    /// The pending executions (`devices/{id}/jobs/notify`).
    Pending(Vec<PendingJob>),
    /// An execution to run (`devices/{id}/jobs/{job_id}`).
    Document(JobDocument),
    /// The answer to `get`: the pending executions and the documents of those in progress.
    PendingAnswer {
        /// The request id echoed.
        request_id: Option<String>,
        /// Pending executions.
        jobs: Vec<PendingJob>,
        /// Documents of the executions in progress.
        documents: Vec<JobDocument>,
    },
    /// The answer to a report or an error (`devices/{id}/jobs/response`), as sent.
    Answer(Value),
}

/// The status a device reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    /// Still running (progress).
    InProgress,
    /// Done.
    Succeeded,
    /// Ran and failed (may be retried by the job's policy).
    Failed,
    /// Refused to run it.
    Rejected,
}

impl JobStatus {
    /// As the protocol spells it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "in_progress",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Rejected => "rejected",
        }
    }
}

fn pending_list(v: &Value) -> Vec<PendingJob> {
    v.as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|j| {
                    Some(PendingJob {
                        job_id: j.get("job_id")?.as_str()?.to_owned(),
                        state: j.get("state")?.as_str()?.to_owned(),
                        attempt: j.get("attempt")?.as_u64()?,
                        version: j.get("version")?.as_u64()?,
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

fn document(v: &Value) -> Option<JobDocument> {
    let op = v.get("operation")?;
    let operation = if let Some(c) = op.get("command") {
        JobOperation::Command {
            name: c.get("name")?.as_str()?.to_owned(),
            payload: c.get("payload").cloned().unwrap_or(Value::Null),
            timeout_secs: c.get("timeout_secs").and_then(Value::as_u64).unwrap_or(0),
        }
    } else {
        JobOperation::DesiredPatch(op.get("desired_patch")?.clone())
    };
    Some(JobDocument {
        job_id: v.get("job_id")?.as_str()?.to_owned(),
        operation,
        attempt: v.get("attempt")?.as_u64()?,
        version: v.get("version")?.as_u64()?,
        status_details: v.get("status_details").cloned().unwrap_or_else(|| json!({})),
    })
}

/// Reads a message of the device's inbox as a job message; `None` for other topics, the device's
/// own requests (echoed by its `jobs/+` subscription) and malformed payloads.
#[must_use]
pub fn parse(message: &Incoming) -> Option<JobMessage> {
    let mut levels = message.topic.split('/');
    let (Some("devices"), Some(_), Some("jobs"), Some(last), None) =
        (levels.next(), levels.next(), levels.next(), levels.next(), levels.next())
    else {
        return None;
    };
    let v: Value = serde_json::from_slice(&message.payload).ok()?;
    match last {
        "get" => None,
        "notify" => Some(JobMessage::Pending(pending_list(v.get("jobs")?))),
        "response" => {
            if v.get("documents").is_some() {
                Some(JobMessage::PendingAnswer {
                    request_id: v.get("request_id").and_then(Value::as_str).map(str::to_owned),
                    jobs: pending_list(v.get("jobs")?),
                    documents: v
                        .get("documents")
                        .and_then(Value::as_array)
                        .map(|d| d.iter().filter_map(document).collect())
                        .unwrap_or_default(),
                })
            } else {
                Some(JobMessage::Answer(v))
            }
        }
        _ => document(&v).map(JobMessage::Document),
    }
}

/// Asks for the pending executions (`devices/{id}/jobs/get`); the answer comes as a
/// [`JobMessage::PendingAnswer`]. Call it after each connection.
///
/// # Errors
/// [`Stopped`] when the device task has ended.
pub async fn request_pending(handle: &DeviceHandle, request_id: &str) -> Result<(), Stopped> {
    let channel = Channel::subtopic("jobs/get").map_err(|_| Stopped)?;
    let payload = json!({"request_id": request_id}).to_string();
    handle.publish(channel, Bytes::from(payload)).await
}

/// Reports progress or the result of `job_id`'s execution
/// (`devices/{id}/jobs/{job_id}/update`). `status_details` (a JSON object, at most 4 KiB)
/// replaces the previous details; `expected_version` makes the report fail when the execution
/// changed since.
///
/// # Errors
/// [`Stopped`] when the device task has ended, or when `job_id` cannot be part of a topic.
pub async fn report(
    handle: &DeviceHandle,
    job_id: &str,
    status: JobStatus,
    status_details: Option<Map<String, Value>>,
    expected_version: Option<u64>,
) -> Result<(), Stopped> {
    let channel = Channel::subtopic(format!("jobs/{job_id}/update")).map_err(|_| Stopped)?;
    let mut body =
        json!({"request_id": format!("{job_id}-{}", status.as_str()), "status": status.as_str()});
    if let Some(details) = status_details {
        body["status_details"] = Value::Object(details);
    }
    if let Some(v) = expected_version {
        body["expected_version"] = json!(v);
    }
    handle.publish(channel, Bytes::from(body.to_string())).await
}

/// Asks for the pending executions each time the device (re)connects and its subscriptions are
/// in place, until the device task stops.
pub async fn request_pending_on_each_connection(handle: DeviceHandle) {
    let mut n = 0u64;
    loop {
        if handle.wait_for_stats(|s| s.connected && s.subscribed).await.is_err() {
            return;
        }
        n += 1;
        if request_pending(&handle, &format!("pending-{n}")).await.is_err() {
            return;
        }
        if handle.wait_for_stats(|s| !s.connected).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incoming(topic: &str, payload: &Value) -> Incoming {
        Incoming {
            topic: topic.to_owned(),
            payload: Bytes::from(payload.to_string()),
            response_topic: None,
            correlation_data: None,
        }
    }

    #[test]
    fn messages_are_told_apart_by_topic() {
        let doc = json!({"job_id": "j1", "state": "in_progress", "attempt": 2, "version": 5,
            "status_details": {}, "operation": {"command": {"name": "reboot", "payload": 1, "timeout_secs": 9}}});
        let Some(JobMessage::Document(d)) = parse(&incoming("devices/d/jobs/j1", &doc)) else {
            panic!("a document");
        };
        assert_eq!((d.job_id.as_str(), d.attempt, d.version), ("j1", 2, 5));
        assert_eq!(
            d.operation,
            JobOperation::Command { name: "reboot".into(), payload: json!(1), timeout_secs: 9 }
        );
        let notify =
            json!({"jobs": [{"job_id": "j1", "state": "queued", "attempt": 1, "version": 1}]});
        assert!(matches!(
            parse(&incoming("devices/d/jobs/notify", &notify)),
            Some(JobMessage::Pending(p)) if p.len() == 1
        ));
        let answer = json!({"request_id": "r", "status": "ok", "jobs": [], "documents": [doc]});
        assert!(matches!(
            parse(&incoming("devices/d/jobs/response", &answer)),
            Some(JobMessage::PendingAnswer { documents, .. }) if documents.len() == 1
        ));
        assert_eq!(parse(&incoming("devices/d/jobs/get", &json!({}))), None);
        assert_eq!(parse(&incoming("devices/d/jobs/j1/update", &json!({}))), None);
        assert_eq!(parse(&incoming("devices/d/telemetry", &json!({}))), None);
    }
}
