//! Direct commands over REST with a stand-in for the server's MQTT side (`FakeDevices`): which
//! devices are online, what was delivered, and devices that answer at once.

use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use domain::{Command, CommandOutcome, CommandState, DeviceId, Role, Timestamp};
use http_api::{CommandDispatcher, CommandLimits, CommandWaiters, DispatchError};
use serde_json::{Value, json};
use store::{CommandProgress, Store};

use crate::api::TestApi;

/// The server's side, faked: devices listed in `online` are connected; delivering records the
/// command `delivered`, and when `answer` is set the device answers with it at once.
struct FakeDevices {
    store: OnceLock<Arc<dyn Store>>,
    limits: CommandLimits,
    waiters: Arc<CommandWaiters>,
    online: Mutex<Vec<String>>,
    answer: Mutex<Option<CommandOutcome>>,
    delivered: Mutex<Vec<String>>,
}

impl FakeDevices {
    fn new(max_waits: usize) -> Arc<Self> {
        Arc::new(Self {
            store: OnceLock::new(),
            limits: CommandLimits { max_payload_bytes: 64, ..CommandLimits::default() },
            waiters: CommandWaiters::new(max_waits),
            online: Mutex::new(Vec::new()),
            answer: Mutex::new(None),
            delivered: Mutex::new(Vec::new()),
        })
    }

    fn store(&self) -> &dyn Store {
        self.store.get().expect("the store is set after the API is built").as_ref()
    }
}

#[async_trait]
impl CommandDispatcher for FakeDevices {
    fn limits(&self) -> &CommandLimits {
        &self.limits
    }

    fn waiters(&self) -> &Arc<CommandWaiters> {
        &self.waiters
    }

    async fn is_online(&self, device: &DeviceId) -> Result<bool, DispatchError> {
        Ok(self
            .online
            .lock()
            .expect("a test mutex is never poisoned")
            .iter()
            .any(|d| d == device.as_str()))
    }

    async fn deliver(&self, command: &Command) -> Result<Command, DispatchError> {
        self.delivered.lock().expect("a test mutex is never poisoned").push(command.id.to_string());
        let at = Timestamp::from_millis(command.created_at.millis() + 1);
        let update = self
            .store()
            .advance_command(&command.device_id, &command.id, &CommandProgress::Delivered, at)
            .await?;
        let answer = self.answer.lock().expect("a test mutex is never poisoned").clone();
        if let Some(outcome) = answer {
            let update = self
                .store()
                .advance_command(
                    &command.device_id,
                    &command.id,
                    &CommandProgress::Answered(outcome),
                    at,
                )
                .await?;
            self.waiters.notify(&update.command);
        }
        Ok(update.command)
    }
}

async fn api_with(fake: &Arc<FakeDevices>) -> TestApi {
    let dispatcher = Arc::clone(fake) as Arc<dyn CommandDispatcher>;
    let api =
        TestApi::build(http_api::ApiConfig::default(), |s| s.with_command_dispatcher(dispatcher))
            .await;
    let _ = fake.store.set(Arc::clone(&api.store) as Arc<dyn Store>);
    for (id, online) in [("on-1", true), ("off-1", false)] {
        api.create_device(json!({"id": id, "state": "active"})).await;
        if online {
            fake.online.lock().expect("a test mutex is never poisoned").push(id.to_owned());
        }
    }
    api
}

async fn send(api: &TestApi, device: &str, body: Value) -> crate::api::Resp {
    api.post(&format!("/api/v1/devices/{device}/commands"))
        .role(Role::Operator)
        .json(&body)
        .send()
        .await
}

#[tokio::test]
async fn without_a_dispatcher_commands_are_unavailable() {
    let api = TestApi::new().await;
    api.create_device(json!({"id": "on-1"})).await;
    send(&api, "on-1", json!({"name": "ping"})).await.assert_problem(503, "gateway_unavailable");
}

#[tokio::test]
async fn bad_requests_are_refused_and_store_nothing() {
    let fake = FakeDevices::new(10);
    let api = api_with(&fake).await;
    for (body, status, code) in [
        (json!({"name": "no spaces"}), 422, "validation_failed"),
        (json!({"name": ""}), 422, "validation_failed"),
        (json!({"name": "ping", "timeout_secs": 0}), 422, "validation_failed"),
        (json!({"name": "ping", "timeout_secs": 301}), 422, "validation_failed"),
        (json!({"name": "ping", "ttl_secs": 604_801}), 422, "validation_failed"),
        (json!({"name": "ping", "payload": {"blob": "x".repeat(100)}}), 422, "validation_failed"),
        (json!({"name": "ping", "priority": 1}), 400, "unknown_field"),
        (json!({"payload": 1}), 400, "invalid_body"),
    ] {
        let problem = send(&api, "on-1", body.clone()).await.assert_problem(status, code);
        assert_eq!(problem["code"], code, "{body}");
    }
    send(&api, "ghost", json!({"name": "ping", "ttl_secs": 60}))
        .await
        .assert_problem(404, "device_not_found");
    send(&api, "ghost", json!({"name": "ping"})).await.assert_problem(404, "device_not_found");
    let problem =
        send(&api, "off-1", json!({"name": "ping"})).await.assert_problem(409, "device_offline");
    assert!(problem["detail"].as_str().unwrap().contains("ttl_secs"), "{problem}");
    let list = api
        .get("/api/v1/devices/off-1/commands")
        .role(Role::Viewer)
        .send()
        .await
        .assert_status(200)
        .json();
    assert_eq!(list, json!({"items": [], "next_cursor": null}));
    assert!(fake.delivered.lock().expect("a test mutex is never poisoned").is_empty());
}

#[tokio::test]
async fn an_asynchronous_command_is_delivered_or_queued() {
    let fake = FakeDevices::new(10);
    let api = api_with(&fake).await;
    let resp =
        send(&api, "on-1", json!({"name": "ping", "payload": [1, 2]})).await.assert_status(202);
    let c = resp.json();
    assert_eq!(c["state"], "delivered");
    assert_eq!(c["payload"], json!([1, 2]));
    assert_eq!(c["timeout_secs"], 30);
    assert_eq!(c["expires_at"], Value::Null);
    let cid = c["id"].as_str().unwrap().to_owned();
    assert_eq!(
        resp.header("location"),
        Some(format!("/api/v1/devices/on-1/commands/{cid}").as_str())
    );
    assert_eq!(*fake.delivered.lock().expect("a test mutex is never poisoned"), vec![cid.clone()]);

    let queued = send(&api, "off-1", json!({"name": "ping", "ttl_secs": 60}))
        .await
        .assert_status(202)
        .json();
    assert_eq!(queued["state"], "queued");
    assert_eq!(
        queued["expires_at"],
        Timestamp::from_millis(api.now().millis() + 60_000).to_rfc3339()
    );
    assert_eq!(
        fake.delivered.lock().expect("a test mutex is never poisoned").len(),
        1,
        "offline devices get nothing now"
    );

    let got = api
        .get(&format!("/api/v1/devices/on-1/commands/{cid}"))
        .role(Role::Viewer)
        .send()
        .await
        .assert_status(200)
        .json();
    assert_eq!(got, c);
    api.get(&format!("/api/v1/devices/off-1/commands/{cid}"))
        .role(Role::Viewer)
        .send()
        .await
        .assert_problem(404, "command_not_found");
    api.get("/api/v1/devices/on-1/commands/cmd_nope")
        .role(Role::Viewer)
        .send()
        .await
        .assert_problem(404, "command_not_found");
}

#[tokio::test]
async fn a_synchronous_command_answers_with_the_devices_result() {
    let fake = FakeDevices::new(10);
    let api = api_with(&fake).await;
    *fake.answer.lock().expect("a test mutex is never poisoned") = Some(CommandOutcome {
        state: CommandState::Rejected,
        result: Some(json!({"why": "busy"})),
        error: Some(domain::CommandError { code: "busy".to_owned(), message: "later".to_owned() }),
    });
    let c =
        send(&api, "on-1", json!({"name": "reboot", "wait": true})).await.assert_status(200).json();
    assert_eq!(c["state"], "rejected");
    assert_eq!(c["result"], json!({"why": "busy"}));
    assert_eq!(c["error"], json!({"code": "busy", "message": "later"}));
}

#[tokio::test]
async fn a_synchronous_command_without_an_answer_times_out_with_408() {
    let fake = FakeDevices::new(10);
    let api = api_with(&fake).await;
    let problem = send(&api, "on-1", json!({"name": "reboot", "wait": true, "timeout_secs": 1}))
        .await
        .assert_problem(408, "command_timed_out");
    assert_eq!(problem["status"], 408);
    assert_eq!(problem["state"], "timed_out");
    assert_eq!(problem["name"], "reboot");
    assert_eq!(problem["error"]["code"], "timed_out");
    assert_eq!(fake.waiters.waiting(), 0);
}

#[tokio::test]
async fn synchronous_waits_are_bounded() {
    let fake = FakeDevices::new(0);
    let api = api_with(&fake).await;
    send(&api, "on-1", json!({"name": "reboot", "wait": true}))
        .await
        .assert_problem(503, "too_many_waits");
    let list = api
        .get("/api/v1/devices/on-1/commands")
        .role(Role::Viewer)
        .send()
        .await
        .assert_status(200)
        .json();
    assert_eq!(list["items"], json!([]), "nothing stored");
}

#[tokio::test]
async fn the_idempotency_key_header_returns_the_first_command() {
    let fake = FakeDevices::new(10);
    let api = api_with(&fake).await;
    let post = |body: Value, key: &'static str| {
        api.post("/api/v1/devices/on-1/commands")
            .role(Role::Operator)
            .header("Idempotency-Key", key)
            .json(&body)
    };
    let first = post(json!({"name": "ping"}), "k1").send().await.assert_status(202).json();
    assert_eq!(first["idempotency_key"], "k1");
    let again = post(json!({"name": "ping"}), "k1").send().await.assert_status(202).json();
    assert_eq!(again["id"], first["id"]);
    post(json!({"name": "pong"}), "k1").send().await.assert_problem(409, "conflict");
    assert_eq!(
        fake.delivered.lock().expect("a test mutex is never poisoned").len(),
        1,
        "a retry is not delivered again"
    );
}

#[tokio::test]
async fn commands_list_newest_first_by_state_and_page() {
    let fake = FakeDevices::new(10);
    let api = api_with(&fake).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let c = send(&api, "off-1", json!({"name": "ping", "ttl_secs": 60}))
            .await
            .assert_status(202)
            .json();
        ids.push(c["id"].as_str().unwrap().to_owned());
    }
    api.post(&format!("/api/v1/devices/off-1/commands/{}/cancel", ids[1]))
        .role(Role::Operator)
        .send()
        .await
        .assert_status(200);
    let page = api
        .get("/api/v1/devices/off-1/commands?limit=2")
        .role(Role::Viewer)
        .send()
        .await
        .assert_status(200)
        .json();
    assert_eq!(crate::api::ids(&page), vec![ids[2].clone(), ids[1].clone()]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let page = api
        .get(&format!("/api/v1/devices/off-1/commands?limit=2&cursor={cursor}"))
        .role(Role::Viewer)
        .send()
        .await
        .assert_status(200)
        .json();
    assert_eq!(
        (crate::api::ids(&page), &page["next_cursor"]),
        (vec![ids[0].clone()], &Value::Null)
    );
    let page = api
        .get("/api/v1/devices/off-1/commands?state=queued")
        .role(Role::Viewer)
        .send()
        .await
        .assert_status(200)
        .json();
    assert_eq!(crate::api::ids(&page), vec![ids[2].clone(), ids[0].clone()]);
    for (query, status, code) in [
        ("state=done", 422, "validation_failed"),
        ("cursor=zz", 400, "invalid_cursor"),
        ("sort=asc", 400, "invalid_query"),
    ] {
        api.get(&format!("/api/v1/devices/off-1/commands?{query}"))
            .role(Role::Viewer)
            .send()
            .await
            .assert_problem(status, code);
    }
    api.get("/api/v1/devices/ghost/commands")
        .role(Role::Viewer)
        .send()
        .await
        .assert_problem(404, "device_not_found");
}

#[tokio::test]
async fn canceling_ends_a_command_once() {
    let fake = FakeDevices::new(10);
    let api = api_with(&fake).await;
    let c = send(&api, "on-1", json!({"name": "ping"})).await.assert_status(202).json();
    let path = format!("/api/v1/devices/on-1/commands/{}/cancel", c["id"].as_str().unwrap());
    let canceled = api.post(&path).role(Role::Operator).send().await.assert_status(200).json();
    assert_eq!(canceled["state"], "canceled");
    assert_eq!(canceled["error"]["code"], "canceled");
    api.post(&path).role(Role::Operator).send().await.assert_problem(409, "conflict");
    api.post("/api/v1/devices/on-1/commands/cmd_00000000000000000000/cancel")
        .role(Role::Operator)
        .send()
        .await
        .assert_problem(404, "command_not_found");
}
