//! The authorization matrix: every route with the weakest role it accepts, driven with no token,
//! bad tokens and each role. The table must list every operation of the OpenAPI document, so a
//! new route without an entry here fails.

use std::collections::BTreeSet;

use axum::http::Method;
use domain::Role;

use crate::api::TestApi;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Anyone, without a token.
    Public,
    /// A token with at least this role.
    AtLeast(Role),
}

use Access::{AtLeast, Public};
use Role::{Admin, Operator, Viewer};

/// Method, path template (as in the OpenAPI document), a concrete path, and who may call it.
/// Bodies are never needed: authorization is decided before the body is read.
const ROUTES: &[(&str, &str, &str, Access)] = &[
    ("GET", "/healthz", "/healthz", Public),
    ("GET", "/readyz", "/readyz", Public),
    ("GET", "/metrics", "/metrics", Public),
    ("GET", "/api/openapi.json", "/api/openapi.json", Public),
    ("GET", "/api/docs/", "/api/docs/", Public),
    ("POST", "/api/v1/devices", "/api/v1/devices", AtLeast(Operator)),
    ("GET", "/api/v1/devices", "/api/v1/devices", AtLeast(Viewer)),
    ("GET", "/api/v1/devices/{id}", "/api/v1/devices/dev-1", AtLeast(Viewer)),
    ("PATCH", "/api/v1/devices/{id}", "/api/v1/devices/dev-1", AtLeast(Operator)),
    ("DELETE", "/api/v1/devices/{id}", "/api/v1/devices/dev-1", AtLeast(Operator)),
    ("POST", "/api/v1/devices/{id}/replace", "/api/v1/devices/dev-1/replace", AtLeast(Operator)),
    ("GET", "/api/v1/devices/{id}/twin", "/api/v1/devices/dev-1/twin", AtLeast(Viewer)),
    ("PATCH", "/api/v1/devices/{id}/twin", "/api/v1/devices/dev-1/twin", AtLeast(Operator)),
    (
        "GET",
        "/api/v1/devices/{id}/twin/history",
        "/api/v1/devices/dev-1/twin/history",
        AtLeast(Viewer),
    ),
    (
        "POST",
        "/api/v1/devices/{id}/credentials",
        "/api/v1/devices/dev-1/credentials",
        AtLeast(Operator),
    ),
    (
        "GET",
        "/api/v1/devices/{id}/credentials",
        "/api/v1/devices/dev-1/credentials",
        AtLeast(Viewer),
    ),
    (
        "DELETE",
        "/api/v1/devices/{id}/credentials/{credential_id}",
        "/api/v1/devices/dev-1/credentials/cred_0000000000000000",
        AtLeast(Operator),
    ),
    (
        "POST",
        "/api/v1/devices/{id}/certificates",
        "/api/v1/devices/dev-1/certificates",
        AtLeast(Operator),
    ),
    (
        "GET",
        "/api/v1/devices/{id}/certificates",
        "/api/v1/devices/dev-1/certificates",
        AtLeast(Viewer),
    ),
    (
        "DELETE",
        "/api/v1/devices/{id}/certificates/{serial}",
        "/api/v1/devices/dev-1/certificates/0a",
        AtLeast(Operator),
    ),
    ("GET", "/api/v1/certificates/expiring", "/api/v1/certificates/expiring", AtLeast(Viewer)),
    (
        "POST",
        "/api/v1/devices/{id}/rotate-credentials",
        "/api/v1/devices/dev-1/rotate-credentials",
        AtLeast(Operator),
    ),
    (
        "POST",
        "/api/v1/groups/{name}/rotate-credentials",
        "/api/v1/groups/g1/rotate-credentials",
        AtLeast(Operator),
    ),
    ("POST", "/api/v1/devices/{id}/commands", "/api/v1/devices/dev-1/commands", AtLeast(Operator)),
    ("GET", "/api/v1/devices/{id}/commands", "/api/v1/devices/dev-1/commands", AtLeast(Viewer)),
    (
        "GET",
        "/api/v1/devices/{id}/commands/{command_id}",
        "/api/v1/devices/dev-1/commands/cmd_00000000000000000000",
        AtLeast(Viewer),
    ),
    (
        "POST",
        "/api/v1/devices/{id}/commands/{command_id}/cancel",
        "/api/v1/devices/dev-1/commands/cmd_00000000000000000000/cancel",
        AtLeast(Operator),
    ),
    ("POST", "/api/v1/devices:import", "/api/v1/devices:import", AtLeast(Operator)),
    ("GET", "/api/v1/inventory/summary", "/api/v1/inventory/summary", AtLeast(Viewer)),
    ("GET", "/api/v1/inventory/connectivity", "/api/v1/inventory/connectivity", AtLeast(Viewer)),
    ("POST", "/api/v1/jobs", "/api/v1/jobs", AtLeast(Operator)),
    ("GET", "/api/v1/jobs", "/api/v1/jobs", AtLeast(Viewer)),
    ("GET", "/api/v1/jobs/{id}", "/api/v1/jobs/j1", AtLeast(Viewer)),
    ("GET", "/api/v1/jobs/{id}/executions", "/api/v1/jobs/j1/executions", AtLeast(Viewer)),
    ("POST", "/api/v1/jobs/{id}/pause", "/api/v1/jobs/j1/pause", AtLeast(Operator)),
    ("POST", "/api/v1/jobs/{id}/resume", "/api/v1/jobs/j1/resume", AtLeast(Operator)),
    ("POST", "/api/v1/jobs/{id}/cancel", "/api/v1/jobs/j1/cancel", AtLeast(Operator)),
    ("GET", "/api/v1/devices/{id}/jobs", "/api/v1/devices/dev-1/jobs", AtLeast(Viewer)),
    (
        "GET",
        "/api/v1/devices/{id}/twin/effective",
        "/api/v1/devices/dev-1/twin/effective",
        AtLeast(Viewer),
    ),
    ("POST", "/api/v1/config-profiles", "/api/v1/config-profiles", AtLeast(Operator)),
    ("GET", "/api/v1/config-profiles", "/api/v1/config-profiles", AtLeast(Viewer)),
    ("GET", "/api/v1/config-profiles/{name}", "/api/v1/config-profiles/p1", AtLeast(Viewer)),
    ("PATCH", "/api/v1/config-profiles/{name}", "/api/v1/config-profiles/p1", AtLeast(Operator)),
    ("DELETE", "/api/v1/config-profiles/{name}", "/api/v1/config-profiles/p1", AtLeast(Operator)),
    ("POST", "/api/v1/groups", "/api/v1/groups", AtLeast(Operator)),
    ("GET", "/api/v1/groups", "/api/v1/groups", AtLeast(Viewer)),
    ("GET", "/api/v1/groups/{name}", "/api/v1/groups/g1", AtLeast(Viewer)),
    ("PATCH", "/api/v1/groups/{name}", "/api/v1/groups/g1", AtLeast(Operator)),
    ("DELETE", "/api/v1/groups/{name}", "/api/v1/groups/g1", AtLeast(Operator)),
    ("GET", "/api/v1/groups/{name}/devices", "/api/v1/groups/g1/devices", AtLeast(Viewer)),
    ("POST", "/api/v1/groups/{name}/members", "/api/v1/groups/g1/members", AtLeast(Operator)),
    (
        "DELETE",
        "/api/v1/groups/{name}/members/{device_id}",
        "/api/v1/groups/g1/members/dev-1",
        AtLeast(Operator),
    ),
    ("POST", "/api/v1/tokens", "/api/v1/tokens", AtLeast(Admin)),
    ("GET", "/api/v1/tokens", "/api/v1/tokens", AtLeast(Admin)),
    ("DELETE", "/api/v1/tokens/{id}", "/api/v1/tokens/tok_0000000000000000", AtLeast(Admin)),
    ("GET", "/api/v1/whoami", "/api/v1/whoami", AtLeast(Viewer)),
    ("GET", "/api/v1/audit", "/api/v1/audit", AtLeast(Viewer)),
    ("POST", "/api/v1/enrollment-groups", "/api/v1/enrollment-groups", AtLeast(Admin)),
    ("GET", "/api/v1/enrollment-groups", "/api/v1/enrollment-groups", AtLeast(Viewer)),
    ("GET", "/api/v1/enrollment-groups/{name}", "/api/v1/enrollment-groups/e1", AtLeast(Viewer)),
    ("PATCH", "/api/v1/enrollment-groups/{name}", "/api/v1/enrollment-groups/e1", AtLeast(Admin)),
    ("DELETE", "/api/v1/enrollment-groups/{name}", "/api/v1/enrollment-groups/e1", AtLeast(Admin)),
    (
        "POST",
        "/api/v1/enrollment-groups/{name}/derive-key",
        "/api/v1/enrollment-groups/e1/derive-key",
        AtLeast(Admin),
    ),
    (
        "POST",
        "/api/v1/enrollment-groups/{name}/derive-keys",
        "/api/v1/enrollment-groups/e1/derive-keys",
        AtLeast(Admin),
    ),
    (
        "POST",
        "/api/v1/enrollment-groups/{name}/claim-codes",
        "/api/v1/enrollment-groups/e1/claim-codes",
        AtLeast(Admin),
    ),
    (
        "GET",
        "/api/v1/enrollment-groups/{name}/claim-codes",
        "/api/v1/enrollment-groups/e1/claim-codes",
        AtLeast(Viewer),
    ),
    ("POST", "/provision/v1/register", "/provision/v1/register", Public),
];

/// Routes that are served but, being the documentation itself, are not in the document.
const UNDOCUMENTED: &[&str] = &["/api/openapi.json", "/api/docs/"];

#[test]
fn the_table_covers_every_documented_operation_with_its_role() {
    let doc = serde_json::to_value(http_api::openapi()).unwrap();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let method = method.to_uppercase();
            // The role the document announces, as the scope of the bearer requirement.
            let role = op["security"][0]["bearer"][0].as_str().map(|r| r.parse::<Role>().unwrap());
            let access = role.map_or(Public, AtLeast);
            documented.insert((method, path.clone(), format!("{access:?}")));
        }
    }
    let table: BTreeSet<_> = ROUTES
        .iter()
        .filter(|(_, template, _, _)| !UNDOCUMENTED.contains(template))
        .map(|(m, template, _, access)| {
            ((*m).to_owned(), (*template).to_owned(), format!("{access:?}"))
        })
        .collect();
    let missing: Vec<_> = documented.difference(&table).collect();
    let extra: Vec<_> = table.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "documented but not in the matrix (or with another role): {missing:?}"
    );
    assert!(extra.is_empty(), "in the matrix but not documented (or with another role): {extra:?}");
}

#[tokio::test]
async fn every_route_enforces_its_role() {
    let api = TestApi::new().await;
    let (revoked_id, revoked) = api.create_token(Admin, None).await;
    api.delete(&format!("/api/v1/tokens/{revoked_id}")).send().await.assert_status(200);
    let expires = domain::Timestamp::from_millis(api.now().millis() + 60_000);
    let (_, expired) = api.create_token(Admin, Some(expires)).await;
    api.advance_millis(60_000);
    let unknown = http_api::auth::generate_token_secret();

    for &(method, _, path, access) in ROUTES {
        let method: Method = method.parse().unwrap();
        let call = || api.req(method.clone(), path);
        let Access::AtLeast(min) = access else {
            let status = call().no_auth().send().await.status;
            assert!(status != 401 && status != 403, "{method} {path} is public, got {status}");
            continue;
        };
        let ctx = format!("{method} {path}");
        let bad_credentials: [(&str, Option<String>); 6] = [
            ("no token", None),
            ("garbage token", Some("Bearer garbage".to_owned())),
            ("another scheme", Some(format!("Basic {unknown}"))),
            ("unknown token", Some(format!("Bearer {unknown}"))),
            ("revoked token", Some(format!("Bearer {revoked}"))),
            ("expired token", Some(format!("Bearer {expired}"))),
        ];
        for (what, authorization) in bad_credentials {
            let req = match authorization {
                None => call().no_auth(),
                Some(value) => call().header("authorization", &value),
            };
            let resp = req.send().await;
            assert_eq!(resp.status, 401, "{ctx} with {what}: {}", resp.text());
            resp.assert_problem(401, "unauthorized");
        }
        for role in Role::ALL {
            let resp = call().role(role).send().await;
            if role < min {
                let problem = resp.assert_problem(403, "forbidden");
                assert!(
                    problem["detail"].as_str().unwrap().contains(min.as_str()),
                    "{ctx} as {role}: {problem}"
                );
            } else {
                assert!(
                    resp.status != 401 && resp.status != 403,
                    "{ctx} as {role}: got {} {}",
                    resp.status,
                    resp.text()
                );
            }
        }
    }
}
