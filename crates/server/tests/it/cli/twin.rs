//! `herd twin get|set|diff|history` against an in-process server.

use serde_json::json;
use test_support::TestServer;

use super::Cli;

#[tokio::test(flavor = "multi_thread")]
async fn twins_through_the_cli() {
    let server = TestServer::start().await;
    let cli = Cli { server: &server };
    cli.ok(&["device", "create", "lamp-1"]);

    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), r#"{"light": {"level": 80}}"#).unwrap();
    let at_file = format!("@{}", file.path().display());
    let twin = cli.json(&[
        "twin",
        "set",
        "lamp-1",
        "--desired",
        &at_file,
        "--tags",
        r#"{"room":"hall"}"#,
        "--if-match",
        "0.0",
    ]);
    assert_eq!(twin["etag"], "1.1");
    assert_eq!(twin["desired"]["document"], json!({"light": {"level": 80}}));

    let out = cli.ok(&["twin", "set", "lamp-1", "--desired", r#"{"mode":"eco"}"#]);
    assert!(out.contains("etag: 2.1") && out.contains("status: pending"), "{out}");
    // A stale ETag fails with the server's message and a non-zero exit.
    let err = cli.fails(
        &["twin", "set", "lamp-1", "--desired", r#"{"mode":"off"}"#, "--if-match", "1.1"],
        Some(&server.admin_token),
    );
    assert!(err.contains("precondition_failed") && err.contains("\"2.1\""), "{err}");
    let err = cli.fails(&["twin", "set", "lamp-1", "--desired", "[1]"], Some(&server.admin_token));
    assert!(err.contains("JSON object"), "{err}");
    let err = cli.fails(&["twin", "get", "ghost"], Some(&server.admin_token));
    assert!(err.contains("device_not_found"), "{err}");

    // A dry run shows the change and writes nothing.
    let dry = cli.json(&["twin", "set", "lamp-1", "--desired", r#"{"mode":"off"}"#, "--dry-run"]);
    assert_eq!(dry["desired_changes"], json!({"mode": "off"}), "{dry}");
    assert_eq!(dry["twin"]["etag"], "3.1", "{dry}");
    let out = cli.ok(&["twin", "set", "lamp-1", "--tags", r#"{"room":null}"#, "--dry-run"]);
    assert!(out.contains("\"room\": null") && out.contains("nothing was changed"), "{out}");

    let desired = cli.ok(&["twin", "get", "lamp-1", "--section", "desired"]);
    let desired: serde_json::Value = serde_json::from_str(&desired).unwrap();
    assert_eq!(desired, json!({"light": {"level": 80}, "mode": "eco"}));
    let table = cli.ok(&["twin", "get", "lamp-1"]);
    assert!(table.contains("etag: \"2.1\"") || table.contains("etag: 2.1"), "{table}");
    assert!(table.contains("tags (version 1)"), "{table}");

    let diff = cli.json(&["twin", "diff", "lamp-1"]);
    assert_eq!(diff["delta"], json!({"light": {"level": 80}, "mode": "eco"}));
    assert_eq!(diff["status"]["state"], "pending");
    let diff = cli.ok(&["twin", "diff", "lamp-1"]);
    assert!(diff.starts_with("status: pending since "), "{diff}");

    let history = cli.json(&["twin", "history", "lamp-1", "--section", "desired"]);
    let patches: Vec<_> =
        history["items"].as_array().unwrap().iter().map(|e| e["patch"].clone()).collect();
    assert_eq!(patches, [json!({"mode": "eco"}), json!({"light": {"level": 80}})]);
    let table = cli.ok(&["twin", "history", "lamp-1"]);
    assert!(table.starts_with("SEQ") && table.contains("tags"), "{table}");
    server.stop().await;
}
