//! `herd job create|list|show|pause|resume|cancel` (with `--dry-run` and `--watch`) against an
//! in-process server.

use serde_json::json;
use test_support::TestServer;

use super::Cli;

#[tokio::test(flavor = "multi_thread")]
async fn jobs_through_the_cli() {
    let server = TestServer::start().await;
    let cli = Cli { server: &server };
    for (id, site) in [("pump-1", "berlin"), ("pump-2", "berlin"), ("pump-3", "paris")] {
        cli.ok(&["device", "create", id, "--tag", &format!("site={site}")]);
    }
    let target = ["--command", "reboot", "--filter", "tags.site = 'berlin'"];

    // A dry run shows the blast radius and creates nothing.
    let mut args = vec!["job", "create"];
    args.extend(target);
    args.push("--dry-run");
    let preview = cli.json(&args);
    assert_eq!(preview["total"], 2, "{preview}");
    assert_eq!(preview["sample"], json!(["pump-1", "pump-2"]));
    let table = cli.ok(&args);
    assert!(table.contains("devices") && table.contains("pump-1, pump-2"), "{table}");
    assert!(table.contains("dry run: nothing was created"), "{table}");
    assert_eq!(cli.json(&["job", "list"])["items"], json!([]));

    let mut args = vec!["job", "create", "--id", "reboot-berlin", "--payload", r#"{"delay":5}"#];
    args.extend(target);
    args.extend(["--rate", "60", "--abort-pct", "50", "--abort-min", "2"]);
    let job = cli.json(&args);
    assert_eq!(job["id"], "reboot-berlin", "{job}");
    assert_eq!(job["counters"]["total"], 2, "{job}");
    assert_eq!(job["spec"]["operation"]["command"]["payload"], json!({"delay": 5}));

    let table = cli.ok(&["job", "list"]);
    assert!(table.starts_with("ID") && table.contains("reboot-berlin"), "{table}");
    assert!(table.contains("command reboot"), "{table}");
    let shown = cli.ok(&["job", "show", "reboot-berlin"]);
    assert!(shown.contains("in_progress") && shown.contains("executions"), "{shown}");

    assert_eq!(cli.json(&["job", "pause", "reboot-berlin"])["state"], "paused");
    assert_eq!(cli.json(&["job", "list", "--state", "paused"])["items"][0]["id"], "reboot-berlin");
    assert_eq!(cli.json(&["job", "resume", "reboot-berlin"])["state"], "in_progress");
    let canceled = cli.json(&["job", "cancel", "reboot-berlin"]);
    assert_eq!(canceled["state"], "canceled", "{canceled}");
    // Watching an ended job prints it and returns at once.
    let watched = cli.ok(&["job", "show", "reboot-berlin", "--watch"]);
    assert!(watched.contains("canceled"), "{watched}");

    // Errors carry the server's code and exit non-zero.
    let err = cli.fails(&["job", "show", "ghost"], Some(&server.admin_token));
    assert!(err.contains("job_not_found") || err.contains("404"), "{err}");
    let err = cli.fails(&["job", "resume", "reboot-berlin"], Some(&server.admin_token));
    assert!(err.contains("409") || err.contains("conflict"), "{err}");
    let err = cli.fails(
        &["job", "create", "--command", "reboot", "--filter", "tags.site = "],
        Some(&server.admin_token),
    );
    assert!(err.contains("filter"), "{err}");
    server.stop().await;
}
