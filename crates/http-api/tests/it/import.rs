//! Import: CSV and JSON Lines, per-line rejections, atomic imports, limits, and a large import.

use std::time::Instant;

use axum::body::{Body, Bytes};
use http_api::ApiConfig;
use serde_json::{Value, json};

use crate::api::{Resp, TestApi};

const IMPORT: &str = "/api/v1/devices:import";

/// Sends `body` as `content_type` in chunks of `chunk` bytes, so decoders see split input.
async fn import(api: &TestApi, query: &str, content_type: &str, body: &str, chunk: usize) -> Resp {
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        body.as_bytes().chunks(chunk).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    let body = Body::from_stream(futures_util::stream::iter(chunks));
    api.post(&format!("{IMPORT}{query}")).raw(content_type, body).send().await
}

/// Each report line as `<line> <id> <result>[: <reason>]`.
fn lines(report: &Value) -> Vec<String> {
    report["lines"]
        .as_array()
        .expect("the report lists lines")
        .iter()
        .map(|l| {
            let id = l["id"].as_str().unwrap_or("-");
            let mut s = format!(
                "{} {id} {}",
                l["line"],
                l["result"].as_str().expect("a line has a result")
            );
            if let Some(reason) = l["reason"].as_str() {
                s.push_str(": ");
                s.push_str(reason);
            }
            s
        })
        .collect()
}

#[track_caller]
fn assert_counts(
    report: &Value,
    created: u64,
    updated: u64,
    unchanged: u64,
    rejected: u64,
    committed: bool,
) {
    let got = ["created", "updated", "unchanged", "rejected", "committed"].map(|k| &report[k]);
    let expected =
        [json!(created), json!(updated), json!(unchanged), json!(rejected), json!(committed)];
    assert_eq!(got, expected.each_ref(), "{report}");
}

#[tokio::test]
async fn csv_with_quoted_comma_and_newline() {
    let csv = concat!(
        "id,name,state,attributes,tag.site,tag.floor\r\n",
        "s-1,\"Hall 1, north\",active,\"{\"\"rack\"\": \"\"a\"\",\n \"\"slot\"\": 3}\",berlin,2\r\n",
        "s-2,,,,paris,\r\n",
        "\r\n",
        "bad id,,,,,\r\n",
        "s-3,x,sleeping,,,\r\n",
        "s-4,\"quote \"\"q\"\"\",,,,\r\n",
    );
    for chunk in [1, 7, 4096] {
        let api = TestApi::new().await;
        let report = import(&api, "", "text/csv", csv, chunk).await.assert_status(200).json();
        assert_counts(&report, 3, 0, 0, 2, true);
        assert_eq!(
            lines(&report),
            [
                "2 s-1 created",
                "4 s-2 created",
                "6 - rejected: invalid device id: ' ' is not allowed; use letters, digits and . _ : -",
                "7 s-3 rejected: invalid state: \"sleeping\" is not a lifecycle state; expected one of registered, active, suspended, decommissioned, retired",
                "8 s-4 created",
            ],
            "chunk size {chunk}"
        );
        let d = api.get("/api/v1/devices/s-1").send().await.assert_status(200).json();
        assert_eq!(d["name"], "Hall 1, north");
        assert_eq!(d["state"], "active");
        assert_eq!(d["attributes"], json!({"rack": "a", "slot": 3}));
        assert_eq!(d["tags"], json!({"site": "berlin", "floor": "2"}));
        let d = api.get("/api/v1/devices/s-2").send().await.assert_status(200).json();
        assert_eq!(
            (&d["name"], &d["state"], &d["tags"]),
            (&json!(""), &json!("registered"), &json!({"site": "paris"}))
        );
        let d = api.get("/api/v1/devices/s-4").send().await.assert_status(200).json();
        assert_eq!(d["name"], "quote \"q\"");
    }
}

#[tokio::test]
async fn csv_updates_existing_devices() {
    let api = TestApi::new().await;
    api.create_device(json!({"id": "a", "name": "old", "tags": {"site": "x"}})).await;
    api.create_device(json!({"id": "b", "name": "same"})).await;
    let csv = "id,name\na,new\nb,same\nc,fresh\na,newer\n";
    let report =
        import(&api, "", "text/csv; charset=utf-8", csv, 3).await.assert_status(200).json();
    assert_counts(&report, 1, 2, 1, 0, true);
    assert_eq!(lines(&report), ["2 a updated", "3 b unchanged", "4 c created", "5 a updated"]);
    let a = api.get("/api/v1/devices/a").send().await.json();
    assert_eq!(a["name"], "newer");
    assert_eq!(a["tags"], json!({"site": "x"}), "no tag columns: tags untouched");
}

#[tokio::test]
async fn jsonl_with_rejections_and_report_filter() {
    let api = TestApi::new().await;
    api.create_device(json!({"id": "old", "state": "active"})).await;
    let jsonl = concat!(
        "{\"id\":\"j-1\",\"name\":\"one\",\"tags\":{\"site\":\"berlin\"},\"attributes\":{\"k\":1}}\n",
        "\n",
        "{\"id\":\"j-2\",\"state\":\"active\"}\r\n",
        "{\"id\":\"j-3\",\"colour\":\"red\"}\n",
        "{not json}\n",
        "{\"id\":\"old\",\"state\":\"registered\"}\n",
        "{\"id\":\"j-4\",\"state\":\"retired\"}\n",
        "{\"id\":\"old\",\"name\":\"renamed\"}",
    );
    for content_type in ["application/x-ndjson", "application/jsonl"] {
        let api = TestApi::new().await;
        api.create_device(json!({"id": "old", "state": "active"})).await;
        let report = import(&api, "", content_type, jsonl, 5).await.assert_status(200).json();
        assert_eq!(report["lines"].as_array().unwrap().len(), 7, "{report}");
        assert_eq!(report["lines"][0], json!({"line": 1, "id": "j-1", "result": "created"}));
    }
    let report = import(&api, "?report=rejected", "application/x-ndjson", jsonl, 5)
        .await
        .assert_status(200)
        .json();
    assert_counts(&report, 2, 1, 0, 4, true);
    let got = lines(&report);
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(
        got[0].starts_with("4 - rejected: not a valid line: unknown field `colour`"),
        "{got:?}"
    );
    assert!(got[1].starts_with("5 - rejected: not a valid line: key must be a string"), "{got:?}");
    assert!(got[2].starts_with("6 old rejected: "), "illegal transition: {got:?}");
    assert!(got[2].contains("active") && got[2].contains("registered"), "{got:?}");
    assert!(got[3].starts_with("7 j-4 rejected: "), "a new device cannot start retired: {got:?}");
    let d = api.get("/api/v1/devices/j-1").send().await.assert_status(200).json();
    assert_eq!(
        (&d["name"], &d["tags"], &d["attributes"]),
        (&json!("one"), &json!({"site": "berlin"}), &json!({"k": 1}))
    );
    assert_eq!(api.get("/api/v1/devices/old").send().await.json()["name"], "renamed");
}

#[tokio::test]
async fn atomic_import_with_one_bad_line_commits_nothing() {
    let api = TestApi::new().await;
    let csv = "id,state\na,active\nb,bogus\nc,\n";
    let report =
        import(&api, "?atomic=true", "text/csv", csv, 1000).await.assert_status(200).json();
    assert_counts(&report, 0, 0, 2, 1, false);
    assert_eq!(
        lines(&report),
        [
            "2 a unchanged: not applied: line 3 was rejected and the import is atomic",
            "3 b rejected: invalid state: \"bogus\" is not a lifecycle state; expected one of registered, active, suspended, decommissioned, retired",
            "4 c unchanged: not applied: line 3 was rejected and the import is atomic",
        ]
    );
    let page = api.get("/api/v1/devices").send().await.json();
    assert_eq!(page["items"], json!([]));

    // A line the store rejects (an illegal transition) also abandons the whole import.
    api.create_device(json!({"id": "x"})).await;
    let jsonl = "{\"id\":\"y\"}\n{\"id\":\"x\",\"state\":\"retired\"}\n";
    let report = import(&api, "?atomic=true&report=rejected", "application/x-ndjson", jsonl, 1000)
        .await
        .assert_status(200)
        .json();
    assert_counts(&report, 0, 0, 1, 1, false);
    assert_eq!(report["lines"].as_array().unwrap().len(), 1);
    assert_eq!(report["lines"][0]["line"], 2);
    api.get("/api/v1/devices/y").send().await.assert_problem(404, "device_not_found");

    // Without bad lines it commits everything.
    let report = import(&api, "?atomic=true", "text/csv", "id\np\nq\n", 1000)
        .await
        .assert_status(200)
        .json();
    assert_counts(&report, 2, 0, 0, 0, true);
    api.get("/api/v1/devices/q").send().await.assert_status(200);
}

#[tokio::test]
async fn format_comes_from_query_or_content_type() {
    let api = TestApi::new().await;
    let report = import(&api, "?format=jsonl", "text/plain", "{\"id\":\"a\"}\n", 100)
        .await
        .assert_status(200)
        .json();
    assert_counts(&report, 1, 0, 0, 0, true);
    let report = import(&api, "?format=csv", "application/octet-stream", "id\nb\n", 100)
        .await
        .assert_status(200)
        .json();
    assert_counts(&report, 1, 0, 0, 0, true);
    import(&api, "", "text/plain", "id\nc\n", 100)
        .await
        .assert_problem(415, "unsupported_media_type");
    api.post(IMPORT).body("id\nc\n").send().await.assert_problem(415, "unsupported_media_type");
    import(&api, "?format=xml", "text/csv", "id\n", 100).await.assert_problem(400, "invalid_query");
    import(&api, "?atomic=yes", "text/csv", "id\n", 100).await.assert_problem(400, "invalid_query");
    import(&api, "?report=some", "text/csv", "id\n", 100)
        .await
        .assert_problem(400, "invalid_query");
}

#[tokio::test]
async fn csv_header_must_be_known() {
    let api = TestApi::new().await;
    for csv in ["id,colour\na,red\n", "name\nx\n", "", "id,id\n", "id,tag.bad key\n"] {
        let resp = import(&api, "", "text/csv", csv, 100).await;
        resp.assert_problem(400, "invalid_csv_header");
    }
    // Nothing was written.
    assert_eq!(api.get("/api/v1/devices").send().await.json()["items"], json!([]));
    // A header alone is an empty import.
    let report = import(&api, "", "text/csv", "id,name\n", 100).await.assert_status(200).json();
    assert_counts(&report, 0, 0, 0, 0, true);
}

#[tokio::test]
async fn import_body_limit() {
    let config = ApiConfig { max_import_bytes: 64, max_body_bytes: 16, ..ApiConfig::default() };
    let api = TestApi::with_config(config).await;
    // The import route is exempt from max_body_bytes (16) ...
    let report =
        import(&api, "", "text/csv", "id\nabcdefghijklmn\nb\n", 4).await.assert_status(200).json();
    assert_counts(&report, 2, 0, 0, 0, true);
    // ... but a line over it is rejected,
    let report = import(&api, "", "text/csv", "id,name\nc,abcdefghijklmnopq\nd,x\n", 4)
        .await
        .assert_status(200)
        .json();
    assert_eq!(
        lines(&report),
        ["2 - rejected: the record is longer than 16 bytes or 1024 fields", "3 d created"]
    );
    // ... and the body as a whole is bounded by max_import_bytes, streamed or announced.
    let big = format!("id\n{}", "e\n".repeat(40));
    import(&api, "", "text/csv", &big, 8).await.assert_problem(413, "payload_too_large");
    let resp = api.post(IMPORT).raw("text/csv", big.clone()).send().await;
    resp.assert_problem(413, "payload_too_large");
}

#[tokio::test]
async fn atomic_import_row_limit() {
    let config = ApiConfig { max_atomic_import_rows: 2, ..ApiConfig::default() };
    let api = TestApi::with_config(config).await;
    let report =
        import(&api, "?atomic=true", "text/csv", "id\na\nb\n", 100).await.assert_status(200).json();
    assert_counts(&report, 2, 0, 0, 0, true);
    import(&api, "?atomic=true", "text/csv", "id\nc\nd\ne\n", 100)
        .await
        .assert_problem(413, "import_too_large");
    api.get("/api/v1/devices/c").send().await.assert_problem(404, "device_not_found");
    // Best effort has no such limit.
    let report = import(&api, "", "text/csv", "id\nc\nd\ne\n", 100).await.assert_status(200).json();
    assert_counts(&report, 3, 0, 0, 0, true);
}

#[tokio::test]
async fn small_batches_import_everything() {
    let config = ApiConfig { import_batch_size: 3, ..ApiConfig::default() };
    let api = TestApi::with_config(config).await;
    let mut csv = "id,tag.n\n".to_owned();
    for i in 0..10 {
        csv.push_str(&format!("d{i:02},{i}\n"));
    }
    csv.push_str("bad id,x\n");
    let report = import(&api, "", "text/csv", &csv, 10).await.assert_status(200).json();
    assert_counts(&report, 10, 0, 0, 1, true);
    let got = lines(&report);
    assert_eq!(got.len(), 11);
    assert_eq!(got[0], "2 d00 created");
    assert!(got[10].starts_with("12 - rejected"), "{got:?}");
}

#[tokio::test]
async fn hundred_thousand_devices() {
    let api = TestApi::new().await;
    let mut csv = String::from("id,name,state,tag.site\n");
    for i in 0..100_000 {
        let site = ["berlin", "paris", "oslo"][i % 3];
        let state = if i % 2 == 0 { "active" } else { "registered" };
        csv.push_str(&format!("dev-{i:06},Device {i},{state},{site}\n"));
    }
    let started = Instant::now();
    let report = import(&api, "?report=rejected", "text/csv", &csv, 64 * 1024)
        .await
        .assert_status(200)
        .json();
    let elapsed = started.elapsed();
    assert_counts(&report, 100_000, 0, 0, 0, true);
    assert_eq!(report["lines"], json!([]));
    let summary = api.get("/api/v1/inventory/summary").send().await.json();
    assert_eq!(summary["total"], 100_000);
    assert_eq!(summary["by_state"]["active"], 50_000);
    let page = api.get("/api/v1/devices?tag=site=oslo&limit=2").send().await.json();
    let ids: Vec<&str> =
        page["items"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["dev-000002", "dev-000005"]);
    assert!(elapsed.as_secs() < 120, "importing 100,000 devices took {elapsed:?}");
}
