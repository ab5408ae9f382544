//! Audit: paging by sequence number, and a client-side chain check on what the API returns.

use domain::audit::ChainVerifier;
use domain::{AuditRecord, Timestamp};
use serde_json::{Value, json};

use crate::api::TestApi;

/// Rebuilds a stored record from its JSON, as the CLI does to verify the chain.
fn record(v: &Value) -> AuditRecord {
    let hash = |key: &str| -> [u8; 32] {
        let text = v[key].as_str().expect("hashes are strings");
        let bytes = hex::decode(text).expect("hashes are hex");
        bytes.try_into().expect("hashes are 32 bytes")
    };
    let text = |key: &str| (!v[key].is_null()).then(|| v[key].to_string());
    let string = |key: &str| v[key].as_str().expect("a string field");
    AuditRecord {
        seq: v["seq"].as_u64().expect("seq is a number"),
        at: Timestamp::parse_rfc3339(string("at")).expect("at is RFC 3339"),
        actor: string("actor").to_owned(),
        action: string("action").to_owned(),
        resource: string("resource").to_owned(),
        before: text("before"),
        after: text("after"),
        prev_hash: hash("prev_hash"),
        hash: hash("hash"),
    }
}

#[tokio::test]
async fn audit_pages_and_verifies() {
    let api = TestApi::new().await;
    api.create_device(json!({"id": "d1", "tags": {"z": "1", "a": "2"}, "attributes": {"b": [1, {"y": 2, "x": 1}]}})).await;
    api.patch("/api/v1/devices/d1")
        .json(&json!({"name": "renamed"}))
        .send()
        .await
        .assert_status(200);
    api.post("/api/v1/groups").json(&json!({"name": "g"})).send().await.assert_status(201);
    api.delete("/api/v1/devices/d1").send().await.assert_status(204);

    let mut all = Vec::new();
    let mut after = 0;
    let mut pages = 0;
    loop {
        let page = api
            .get(&format!("/api/v1/audit?after={after}&limit=2"))
            .send()
            .await
            .assert_status(200)
            .json();
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        all.extend(items.iter().cloned());
        pages += 1;
        match page["next_after"].as_u64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert!(pages >= 3, "{pages}");
    let seqs: Vec<u64> = all.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());

    let mut verifier = ChainVerifier::new();
    for r in &all {
        verifier.check(&record(r)).unwrap_or_else(|e| panic!("{e}: {r}"));
        assert_eq!(r["hash"].as_str().unwrap().len(), 64);
        assert_eq!(r["hash"].as_str().unwrap(), r["hash"].as_str().unwrap().to_lowercase());
    }

    let device_records: Vec<&Value> = all.iter().filter(|r| r["resource"] == "device/d1").collect();
    let actions: Vec<&str> = device_records.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["device.create", "device.update", "device.delete"]);
    let create = device_records[0];
    assert!(create["before"].is_null());
    assert_eq!(create["after"]["id"], "d1");
    assert!(create["actor"].as_str().unwrap().contains("(test admin)"), "{create}");
    assert!(device_records[2]["after"].is_null());

    // Everything after the last record is an empty page.
    let last = seqs.last().unwrap();
    let page =
        api.get(&format!("/api/v1/audit?after={last}")).send().await.assert_status(200).json();
    assert_eq!(page, json!({"items": [], "next_after": null}));
}

#[tokio::test]
async fn audit_limit_is_bounded() {
    let api = TestApi::new().await;
    api.get("/api/v1/audit?limit=0").send().await.assert_problem(422, "validation_failed");
    api.get("/api/v1/audit?limit=1001").send().await.assert_problem(422, "validation_failed");
    api.get("/api/v1/audit?limit=1000").send().await.assert_status(200);
}
