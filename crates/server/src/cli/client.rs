//! A small REST client for the operator commands: bearer auth, JSON in and out, and the server's
//! problem+json errors turned into one-line messages.

use anyhow::{Context as _, anyhow, bail};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;

use crate::cli::ClientArgs;

/// A client bound to one server and token.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub(crate) fn new(args: &ClientArgs) -> anyhow::Result<Self> {
        let base = args.server.trim_end_matches('/').to_owned();
        if base.starts_with("https://") {
            // The server has no TLS listener yet (it comes with the MQTT gateway's rustls setup);
            // put a TLS-terminating proxy in front and talk plain HTTP on the loopback side.
            bail!("--server {base:?}: https is not supported by this build yet; use http://");
        }
        if !base.starts_with("http://") {
            bail!("--server must be an http:// URL, got {base:?}");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .context("failed to build the HTTP client")?;
        Ok(Self { http, base, token: args.token.clone() })
    }

    pub(crate) fn request(&self, method: Method, path: &str) -> anyhow::Result<RequestBuilder> {
        let Some(token) = &self.token else {
            bail!(
                "no API token: pass --token or set HERD_TOKEN (the first admin token is in <data-dir>/admin-token)"
            );
        };
        Ok(self.http.request(method, format!("{}{path}", self.base)).bearer_auth(token))
    }

    /// Sends a request and returns the JSON body (Null for an empty success).
    pub(crate) async fn send(&self, req: RequestBuilder) -> anyhow::Result<Value> {
        let resp = req.send().await.map_err(|e| self.connect_error(&e))?;
        Self::json(resp).await
    }

    pub(crate) async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.request(Method::GET, path)?).await
    }

    pub(crate) async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.request(Method::POST, path)?.json(body)).await
    }

    pub(crate) async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.request(Method::DELETE, path)?).await
    }

    fn connect_error(&self, e: &reqwest::Error) -> anyhow::Error {
        if e.is_connect() {
            anyhow!(
                "cannot reach the Herd server at {} (is `herd serve` running? set --server or HERD_URL)",
                self.base
            )
        } else if e.is_timeout() {
            anyhow!("the Herd server at {} did not answer in time", self.base)
        } else {
            anyhow!("request to {} failed: {e}", self.base)
        }
    }

    async fn json(resp: Response) -> anyhow::Result<Value> {
        let status = resp.status();
        let bytes = resp.bytes().await.context("failed to read the server's response")?;
        if status.is_success() {
            if bytes.is_empty() || status == StatusCode::NO_CONTENT {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&bytes).context("the server's response is not JSON");
        }
        let problem: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let field = |k: &str| problem.get(k).and_then(Value::as_str).map(str::to_owned);
        let message = field("detail").or_else(|| field("title")).unwrap_or_else(|| {
            status.canonical_reason().unwrap_or("request failed").to_ascii_lowercase()
        });
        match field("code") {
            Some(code) => Err(anyhow!("{message} ({code}, HTTP {})", status.as_u16())),
            None => Err(anyhow!("{message} (HTTP {})", status.as_u16())),
        }
    }
}

/// Percent-encodes a query value or path segment.
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
