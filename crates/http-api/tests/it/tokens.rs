//! Tokens: create (secret shown once), list without secrets, revoke, expiry; whoami.

use domain::{Actor, Mutation, NewToken, Role, TokenHash};
use serde_json::json;
use store::Store;

use crate::api::TestApi;

#[tokio::test]
async fn create_use_list_and_revoke() {
    let api = TestApi::new().await;
    let created = api
        .post("/api/v1/tokens")
        .json(&json!({"name": "ci", "role": "operator", "expires_in_days": 30}))
        .send()
        .await
        .assert_status(201)
        .json();
    let secret = created["token"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("herd_") && secret.len() == 69, "{secret}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("tok_"), "{id}");
    assert_eq!(created["name"], "ci");
    assert_eq!(created["role"], "operator");
    assert_eq!(created["created_at"], "2026-11-26T12:00:00Z");
    assert_eq!(created["expires_at"], "2026-12-26T12:00:00Z");
    assert_eq!(created["revoked_at"], json!(null));

    // The new token works, with its role.
    let me = api.get("/api/v1/whoami").bearer(&secret).send().await.assert_status(200).json();
    assert_eq!(
        me,
        json!({"id": id, "name": "ci", "role": "operator", "expires_at": "2026-12-26T12:00:00Z"})
    );
    api.post("/api/v1/devices")
        .bearer(&secret)
        .json(&json!({"id": "d"}))
        .send()
        .await
        .assert_status(201);
    api.get("/api/v1/tokens").bearer(&secret).send().await.assert_problem(403, "forbidden");

    // Listing never shows secrets.
    let list = api.get("/api/v1/tokens").send().await.assert_status(200);
    assert!(!list.text().contains(&secret));
    let list = list.json();
    let items = list["items"].as_array().unwrap();
    let listed = items.iter().find(|t| t["id"] == id.as_str()).unwrap();
    assert_eq!(listed.get("token"), None);
    assert_eq!(listed["role"], "operator");
    assert_eq!(items.len(), 4, "the three standing tokens and the new one");

    api.advance_millis(1000);
    let revoked =
        api.delete(&format!("/api/v1/tokens/{id}")).send().await.assert_status(200).json();
    assert_eq!(revoked["id"], id.as_str());
    assert_eq!(revoked["revoked_at"], "2026-11-26T12:00:01Z");
    api.get("/api/v1/whoami").bearer(&secret).send().await.assert_problem(401, "unauthorized");
    // Revoking twice keeps the first time.
    api.advance_millis(1000);
    let again = api.delete(&format!("/api/v1/tokens/{id}")).send().await.assert_status(200).json();
    assert_eq!(again["revoked_at"], "2026-11-26T12:00:01Z");
}

#[tokio::test]
async fn tokens_expire_by_the_clock() {
    let api = TestApi::new().await;
    let created = api
        .post("/api/v1/tokens")
        .json(&json!({"name": "short", "role": "viewer", "expires_at": "2026-11-26T13:00:00Z"}))
        .send()
        .await
        .assert_status(201)
        .json();
    let secret = created["token"].as_str().unwrap();
    assert_eq!(created["expires_at"], "2026-11-26T13:00:00Z");
    api.get("/api/v1/whoami").bearer(secret).send().await.assert_status(200);
    api.advance_millis(3_600_000 - 1);
    api.get("/api/v1/whoami").bearer(secret).send().await.assert_status(200);
    api.advance_millis(1);
    api.get("/api/v1/whoami").bearer(secret).send().await.assert_problem(401, "unauthorized");
}

#[tokio::test]
async fn tokens_without_expiry_and_whoami_for_each_role() {
    let api = TestApi::new().await;
    let created = api
        .post("/api/v1/tokens")
        .json(&json!({"name": "forever", "role": "admin"}))
        .send()
        .await
        .assert_status(201)
        .json();
    assert_eq!(created["expires_at"], json!(null));
    for role in Role::ALL {
        let me = api.get("/api/v1/whoami").role(role).send().await.assert_status(200).json();
        assert_eq!(me["role"], role.as_str());
        assert_eq!(me["name"], format!("test {role}"));
    }
}

#[tokio::test]
async fn an_operator_chosen_bootstrap_secret_authenticates() {
    let api = TestApi::new().await;
    let secret = "chosen-by-the-operator-0123";
    let new = NewToken {
        id: http_api::auth::generate_token_id(),
        name: "bootstrap-admin".to_owned(),
        role: Role::Admin,
        hash: TokenHash::of_secret(secret),
        expires_at: None,
    };
    let m = Mutation { actor: Actor::system(), at: api.now() };
    api.store.create_token(&new, &m).await.unwrap();
    let me = api.get("/api/v1/whoami").bearer(secret).send().await.assert_status(200).json();
    assert_eq!(me["name"], "bootstrap-admin");
    api.get("/api/v1/whoami")
        .bearer("chosen-by-the-operator-0124")
        .send()
        .await
        .assert_problem(401, "unauthorized");
}
