//! The committed OpenAPI document (`docs/openapi.json`) matches the code.
//!
//! Regenerate it with `UPDATE_EXPECT=1 cargo test -p http-api --test it openapi`.

use std::path::PathBuf;

use crate::api::TestApi;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

#[test]
fn docs_openapi_json_is_current() {
    let generated = http_api::openapi_json() + "\n";
    let path = committed_path();
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json is stale; run `UPDATE_EXPECT=1 cargo test -p http-api --test it openapi` and commit the diff"
    );
}

#[test]
fn document_is_openapi_3_1_with_bearer_security() {
    let doc = serde_json::to_value(http_api::openapi()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    for schema in
        ["Problem", "Device", "Group", "ImportReport", "AuditPage", "Token", "LifecycleState"]
    {
        assert!(doc["components"]["schemas"][schema].is_object(), "schema {schema} missing");
    }
    let op = &doc["paths"]["/api/v1/devices/{id}"]["patch"];
    assert_eq!(op["security"][0]["bearer"][0], "operator");
    for status in ["200", "401", "403", "412", "500"] {
        assert!(op["responses"][status].is_object(), "PATCH device lacks {status}");
    }
}

#[tokio::test]
async fn the_document_and_swagger_ui_are_served() {
    let api = TestApi::new().await;
    let resp = api.get("/api/openapi.json").no_auth().send().await.assert_status(200);
    assert_eq!(resp.json(), serde_json::to_value(http_api::openapi()).unwrap());
    let resp = api.get("/api/docs/").no_auth().send().await.assert_status(200);
    assert!(resp.text().contains("swagger"), "{}", resp.text());
}
