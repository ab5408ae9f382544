//! `herd config profile create|list|get|set|delete` (with `--dry-run`) and `herd twin effective
//! [--explain]` against an in-process server.

use std::time::Duration;

use serde_json::{Value, json};
use test_support::TestServer;

use super::Cli;

fn json_file(value: &Value) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("a temporary file");
    std::fs::write(file.path(), value.to_string()).expect("write the temporary file");
    file
}

fn path(file: &tempfile::NamedTempFile) -> String {
    file.path().display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn profiles_through_the_cli() {
    let server = TestServer::start().await;
    let cli = Cli { server: &server };
    for id in ["lamp-1", "lamp-2"] {
        cli.ok(&["device", "create", id, "--state", "active"]);
    }
    cli.ok(&["group", "create", "hall"]);
    cli.ok(&["group", "add", "hall", "lamp-1"]);

    let base = json_file(&json!({"light": {"level": 50}, "mode": "eco"}));
    // A dry run shows the reach and creates nothing.
    let out = cli.ok(&[
        "config",
        "profile",
        "create",
        "base",
        "--target",
        "fleet",
        "--document",
        &path(&base),
        "--dry-run",
    ]);
    assert!(out.contains("devices") && out.contains("lamp-1, lamp-2"), "{out}");
    assert!(out.contains("dry run: nothing was created"), "{out}");
    let err = cli.fails(&["config", "profile", "get", "base"], Some(&server.admin_token));
    assert!(err.contains("config_profile_not_found"), "{err}");

    let p = cli.json(&[
        "config",
        "profile",
        "create",
        "base",
        "--target",
        "fleet",
        "--document",
        &path(&base),
        "--description",
        "all lamps",
    ]);
    assert_eq!((&p["version"], &p["priority"]), (&json!(1), &json!(0)));
    let hall = json_file(&json!({"light": {"level": 80}}));
    let out = cli.ok(&[
        "config",
        "profile",
        "create",
        "hall-bright",
        "--target",
        "group:hall",
        "--priority",
        "-3",
        "--document",
        &path(&hall),
    ]);
    assert!(
        out.contains("hall-bright") && out.contains("group:hall") && out.contains("-3"),
        "{out}"
    );

    let list = cli.ok(&["config", "profile", "list"]);
    assert!(
        list.starts_with("NAME") && list.contains("base") && list.contains("hall-bright"),
        "{list}"
    );
    let list = cli.json(&["config", "profile", "list", "--target", "group:hall"]);
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let got = cli.ok(&["config", "profile", "get", "base"]);
    assert!(got.contains("all lamps") && got.contains("\"mode\": \"eco\""), "{got}");

    // A dry-run change names the devices of both targets; the real one bumps the version.
    let patch = json_file(&json!({"mode": null, "color": "warm"}));
    let out = cli.ok(&[
        "config",
        "profile",
        "set",
        "base",
        "--target",
        "group:hall",
        "--document-patch",
        &path(&patch),
        "--dry-run",
    ]);
    assert!(out.contains("previously affected devices"), "{out}");
    assert!(
        out.contains("\"mode\": null") && out.contains("dry run: nothing was changed"),
        "{out}"
    );
    let p = cli.json(&[
        "config",
        "profile",
        "set",
        "base",
        "--document-patch",
        &path(&patch),
        "--priority",
        "2",
    ]);
    assert_eq!(p["version"], 2);
    assert_eq!(p["document"], json!({"light": {"level": 50}, "color": "warm"}));
    let err = cli.fails(&["config", "profile", "set", "base"], Some(&server.admin_token));
    assert!(err.contains("nothing to change"), "{err}");
    let err = cli.fails(
        &["config", "profile", "set", "base", "--document-patch", "-"],
        Some(&server.admin_token),
    );
    assert!(err.contains("not valid JSON"), "{err}");
    let err = cli.fails(
        &["config", "profile", "create", "x", "--target", "everyone", "--document", &path(&base)],
        Some(&server.admin_token),
    );
    assert!(err.contains("validation_failed") && err.contains("group:<name>"), "{err}");

    // The effective desired state, with the source of each property.
    let mut eff = cli.json(&["twin", "effective", "lamp-1", "--explain"]);
    assert_eq!(eff["desired"], json!({"light": {"level": 80}, "color": "warm"}));
    assert_eq!(eff["sources"]["/light/level"], "profile:hall-bright");
    for _ in 0..200 {
        if eff["pending_recompute"] == false {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        eff = cli.json(&["twin", "effective", "lamp-1"]);
    }
    assert_eq!(eff["pending_recompute"], false, "{eff}");
    let table = cli.ok(&["twin", "effective", "lamp-1", "--explain"]);
    assert!(table.contains("POINTER") && table.contains("SOURCE"), "{table}");
    let row = table.lines().find(|l| l.starts_with("/light/level")).unwrap_or_default();
    assert!(row.contains("80") && row.ends_with("profile:hall-bright"), "{table}");
    let row = table.lines().find(|l| l.starts_with("/color")).unwrap_or_default();
    assert!(row.contains("\"warm\"") && row.ends_with("profile:base"), "{table}");
    let out = cli.ok(&["twin", "effective", "lamp-2"]);
    assert!(out.contains("\"color\": \"warm\"") && !out.contains("80"), "{out}");

    // The blast radius of a tag change: a dynamic group with a profile would be joined.
    cli.ok(&["group", "create", "north", "--filter", "tags.site = 'north'"]);
    let north = json_file(&json!({"mode": "cold"}));
    cli.ok(&[
        "config",
        "profile",
        "create",
        "north-cold",
        "--target",
        "group:north",
        "--priority",
        "5",
        "--document",
        &path(&north),
    ]);
    let dry = cli.json(&["device", "update", "lamp-2", "--tag", "site=north", "--dry-run"]);
    assert_eq!(dry["groups"], json!({"joined": ["north"], "left": []}), "{dry}");
    assert_eq!(dry["profiles"]["gained"], json!(["north-cold"]), "{dry}");
    let out = cli.ok(&["device", "update", "lamp-2", "--tag", "site=north", "--dry-run"]);
    assert!(out.contains("groups joined") && out.contains("north-cold"), "{out}");
    assert!(out.contains("dry run: nothing was changed"), "{out}");
    assert_eq!(cli.json(&["device", "get", "lamp-2"])["tags"], json!({}));

    let out = cli.ok(&["config", "profile", "delete", "hall-bright", "--dry-run"]);
    assert!(out.contains("lamp-1") && out.contains("nothing was deleted"), "{out}");
    let out = cli.ok(&["config", "profile", "delete", "hall-bright"]);
    assert!(out.contains("profile hall-bright deleted"), "{out}");
    let err = cli.fails(&["config", "profile", "delete", "hall-bright"], Some(&server.admin_token));
    assert!(err.contains("config_profile_not_found"), "{err}");
    server.stop().await;
}
