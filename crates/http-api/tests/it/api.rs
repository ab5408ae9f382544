//! The test harness: a router over a fresh SQLite store in a temporary directory, a clock the
//! test moves, tokens of every role, and a small request builder whose assertions are
//! `#[track_caller]`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use domain::{Actor, Mutation, NewToken, Role, Timestamp, TokenHash, TokenId};
use http_api::{ApiConfig, AppState, auth};
use serde_json::Value;
use store::Store;
use store_sqlite::{SqliteOptions, SqliteStore};
use tower::ServiceExt;

/// 2026-11-26T12:00:00Z, where every test's clock starts.
pub(crate) const START_MILLIS: i64 = 1_795_694_400_000;

/// One API under test.
pub(crate) struct TestApi {
    pub(crate) router: Router,
    pub(crate) store: Arc<SqliteStore>,
    clock: Arc<AtomicI64>,
    /// A secret of each role, by [`Role`] order: viewer, operator, admin.
    secrets: [String; 3],
    _dir: tempfile::TempDir,
}

impl TestApi {
    /// An API with the default configuration.
    pub(crate) async fn new() -> Self {
        Self::with_config(ApiConfig::default()).await
    }

    /// An API with `config`.
    pub(crate) async fn with_config(config: ApiConfig) -> Self {
        Self::build(config, |s| s).await
    }

    /// An API whose state is adjusted by `f` (to add a metrics handle, say).
    pub(crate) async fn build(config: ApiConfig, f: impl FnOnce(AppState) -> AppState) -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let store = Arc::new(
            SqliteStore::open(SqliteOptions::new(dir.path().join("herd.db")))
                .await
                .expect("open the store"),
        );
        let clock = Arc::new(AtomicI64::new(START_MILLIS));
        let c = Arc::clone(&clock);
        let state = AppState::new(Arc::clone(&store) as Arc<dyn Store>, config)
            .with_clock(Arc::new(move || Timestamp::from_millis(c.load(Ordering::SeqCst))));
        let mut api = Self {
            router: http_api::router(f(state)),
            store,
            clock,
            secrets: Default::default(),
            _dir: dir,
        };
        for role in Role::ALL {
            api.secrets[role as usize] = api.create_token(role, None).await.1;
        }
        api
    }

    /// The time on the API's clock.
    pub(crate) fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.clock.load(Ordering::SeqCst))
    }

    /// Moves the API's clock forward.
    pub(crate) fn advance_millis(&self, ms: i64) {
        self.clock.fetch_add(ms, Ordering::SeqCst);
    }

    /// Stores a token directly (not through the API) and returns its id and secret.
    pub(crate) async fn create_token(
        &self,
        role: Role,
        expires_at: Option<Timestamp>,
    ) -> (TokenId, String) {
        let secret = auth::generate_token_secret();
        let new = NewToken {
            id: auth::generate_token_id(),
            name: format!("test {role}"),
            role,
            hash: TokenHash::of_secret(&secret),
            expires_at,
        };
        let m = Mutation { actor: Actor::system(), at: self.now() };
        let token = self.store.create_token(&new, &m).await.expect("store a token");
        (token.id, secret)
    }

    /// The secret of the standing token with `role`.
    pub(crate) fn secret(&self, role: Role) -> &str {
        &self.secrets[role as usize]
    }

    /// A request as the admin (change with [`Req::role`], [`Req::bearer`], [`Req::no_auth`]).
    pub(crate) fn req(&self, method: Method, path: &str) -> Req<'_> {
        Req {
            api: self,
            method,
            path: path.to_owned(),
            headers: vec![(
                header::AUTHORIZATION.to_string(),
                format!("Bearer {}", self.secret(Role::Admin)),
            )],
            body: Body::empty(),
        }
    }

    pub(crate) fn get(&self, path: &str) -> Req<'_> {
        self.req(Method::GET, path)
    }

    pub(crate) fn post(&self, path: &str) -> Req<'_> {
        self.req(Method::POST, path)
    }

    pub(crate) fn patch(&self, path: &str) -> Req<'_> {
        self.req(Method::PATCH, path)
    }

    pub(crate) fn delete(&self, path: &str) -> Req<'_> {
        self.req(Method::DELETE, path)
    }

    /// Creates a device through the API and returns its JSON.
    pub(crate) async fn create_device(&self, body: Value) -> Value {
        self.post("/api/v1/devices").json(&body).send().await.assert_status(201).json()
    }
}

/// A request being built.
pub(crate) struct Req<'a> {
    api: &'a TestApi,
    method: Method,
    path: String,
    headers: Vec<(String, String)>,
    body: Body,
}

impl Req<'_> {
    /// Sends the token of the standing token with `role`.
    pub(crate) fn role(self, role: Role) -> Self {
        let secret = self.api.secret(role).to_owned();
        self.bearer(&secret)
    }

    /// Sends `Authorization: Bearer <secret>`.
    pub(crate) fn bearer(self, secret: &str) -> Self {
        self.header("authorization", &format!("Bearer {secret}"))
    }

    /// Sends no `Authorization` header.
    pub(crate) fn no_auth(mut self) -> Self {
        self.headers.retain(|(k, _)| k != "authorization");
        self
    }

    /// Sets a header, replacing one of the same name.
    pub(crate) fn header(mut self, name: &str, value: &str) -> Self {
        let name = name.to_ascii_lowercase();
        self.headers.retain(|(k, _)| *k != name);
        self.headers.push((name, value.to_owned()));
        self
    }

    /// A JSON body.
    pub(crate) fn json(self, body: &Value) -> Self {
        self.raw("application/json", body.to_string())
    }

    /// A body of `content_type`.
    pub(crate) fn raw(self, content_type: &str, body: impl Into<Body>) -> Self {
        let mut req = self.header("content-type", content_type);
        req.body = body.into();
        req
    }

    /// A body without a content type.
    pub(crate) fn body(mut self, body: impl Into<Body>) -> Self {
        self.body = body.into();
        self
    }

    pub(crate) async fn send(self) -> Resp {
        let mut builder = Request::builder().method(self.method).uri(&self.path);
        for (k, v) in &self.headers {
            builder = builder.header(k, v);
        }
        let response = self
            .api
            .router
            .clone()
            .oneshot(builder.body(self.body).expect("a valid request"))
            .await;
        let response = response.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body =
            axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("read the body");
        Resp { status, headers, body }
    }
}

/// A response, read whole.
#[derive(Debug)]
pub(crate) struct Resp {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Resp {
    #[track_caller]
    pub(crate) fn assert_status(self, status: u16) -> Self {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body: {}", self.text());
        self
    }

    /// Asserts an error response: its status, problem+json, its code, and the request id.
    #[track_caller]
    pub(crate) fn assert_problem(self, status: u16, code: &str) -> Value {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body: {}", self.text());
        assert_eq!(self.header("content-type"), Some("application/problem+json"));
        let problem = self.json();
        assert_eq!(problem["code"], code, "{problem}");
        assert_eq!(problem["status"], status, "{problem}");
        assert!(problem["title"].is_string() && problem["detail"].is_string(), "{problem}");
        assert_eq!(problem["type"], format!("urn:herd:problem:{code}"));
        let request_id = self.header("x-request-id").expect("every response has a request id");
        assert_eq!(problem["request_id"], request_id, "{problem}");
        if status == 401 {
            assert_eq!(self.header("www-authenticate"), Some("Bearer"));
        }
        problem
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().expect("an ASCII header"))
    }

    #[track_caller]
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The ids of the devices on a page.
pub(crate) fn ids(page: &Value) -> Vec<String> {
    let items = page["items"].as_array().expect("a page has items");
    items.iter().map(|d| d["id"].as_str().expect("a device has an id").to_owned()).collect()
}
