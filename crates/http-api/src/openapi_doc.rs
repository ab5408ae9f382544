//! The parts of the OpenAPI document that no single handler owns: its info, tags, the bearer
//! security scheme, and the error responses every authenticated operation shares.
//!
//! Each `/api/v1` operation names the role it needs as the scope of its `bearer` security
//! requirement (OpenAPI 3.1 allows role names there), e.g. `security: [{"bearer": ["operator"]}]`.

use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};

use crate::error::{PROBLEM_JSON, Problem};

/// The name of the security scheme operations refer to.
pub(crate) const BEARER: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herd API",
        description = "Device management for Herd: the device registry, device credentials and \
                       certificates, groups, bulk import, \
                       API tokens and the hash-chained audit log.\n\n\
                       Authenticate with `Authorization: Bearer <token>`. Each operation names \
                       the role it needs as the scope of its `bearer` requirement; roles are \
                       ordered viewer < operator < admin.\n\n\
                       Every error is `application/problem+json` with a stable `code`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(Problem)),
    tags(
        (name = "devices", description = "The device registry"),
        (name = "credentials", description = "Device credentials: the secrets devices connect with"),
        (name = "certificates", description = "Device certificates: issued by Herd's CA from a CSR, for mutual TLS"),
        (name = "twins", description = "Device twins: desired state, reported state and tags, with merge patches, versions and history"),
        (name = "import", description = "Bulk import of devices"),
        (name = "commands", description = "Direct commands to one device, synchronous or queued"),
        (name = "groups", description = "Static and dynamic device groups"),
        (name = "jobs", description = "Fleet jobs: a command or desired-state patch rolled out to many devices"),
        (name = "profiles", description = "Configuration profiles: desired configuration for the fleet or a group, merged under each device's own"),
        (name = "tokens", description = "Operator API tokens"),
        (name = "audit", description = "The hash-chained audit log"),
        (name = "enrollment", description = "Enrollment groups: how unknown devices provision themselves"),
        (name = "provisioning", description = "Zero-touch provisioning: devices register themselves (no operator token)"),
        (name = "health", description = "Probes and metrics (no authentication)"),
    ),
)]
struct ApiDoc;

/// The document the routes add their operations to.
pub(crate) fn base() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("herd_<64 hex digits>")
                .description(Some("An API token secret, as shown once when the token was created"))
                .build(),
        ),
    );
    doc
}

/// Adds the error responses shared by every operation: 401 and 403 to those that need a token,
/// 500 to all.
pub(crate) fn finish(mut doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    let problem = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    PROBLEM_JSON,
                    ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build(),
                )
                .build(),
        )
    };
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
            &mut item.options,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            let responses = &mut operation.responses.responses;
            if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
                responses.entry("401".to_owned()).or_insert_with(|| {
                    problem("`unauthorized`: no valid bearer token (missing, unknown, revoked or expired)")
                });
                responses.entry("403".to_owned()).or_insert_with(|| {
                    problem("`forbidden`: the token's role is below the one this operation needs")
                });
            }
            responses
                .entry("500".to_owned())
                .or_insert_with(|| problem("`internal`: the server failed; see its logs"));
        }
    }
    doc
}
