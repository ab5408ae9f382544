//! Creating the simulated devices and their credentials through the REST API, and the local
//! credentials cache that lets later runs reuse them.
//!
//! Devices are created (or, when they exist, set `active` again) by one bulk import
//! (`POST /api/v1/devices:import`, JSON Lines, `state: active`, tag `simulator=herd-sim`).
//! There is no bulk credential endpoint, so each device without a cached secret gets one
//! `POST /api/v1/devices/{id}/credentials`, [`CREDENTIAL_REQUESTS_IN_FLIGHT`] at a time.
//! A secret is shown once by the server; with a credentials file the secrets are kept there
//! (JSON, mode 0600) and reused, otherwise every run issues new ones (old ones stay valid).
//!
//! Zero-touch ([`zero_touch`], `--zero-touch GROUP`): nothing is imported; the run derives the
//! keys of the devices without a cached secret through the bulk endpoint
//! (`POST /api/v1/enrollment-groups/{group}/derive-keys`, [`DERIVE_BATCH`] per request), then
//! each device registers itself (`POST /provision/v1/register`, a symmetric-key proof made with
//! the SDK's `provisioning`), `register_concurrency` at a time, and keeps the secret it gets.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use device_agent::TlsOptions;
use device_agent::provisioning::{
    DEFAULT_PROOF_LIFETIME, Proof, ProvisioningClient, RegisterRequest, decode_derived_key,
};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::summary::ZeroTouch;

/// Credential requests sent at once: enough to hide the round trips, few enough not to crowd
/// out the server's other work on a small machine.
pub const CREDENTIAL_REQUESTS_IN_FLIGHT: usize = 32;

/// How many times a credential request that failed for a transient reason (connection error,
/// 5xx, 429) is tried in all.
const CREDENTIAL_ATTEMPTS: u32 = 3;

/// Device ids per derive-keys request: the server's default limit.
pub const DERIVE_BATCH: usize = 1000;

/// The devices of a run with their secrets, or why they have none.
#[derive(Debug)]
pub struct Provisioned {
    /// Parallel to the ids asked for: the secret, or the reason the device cannot run.
    pub tokens: Vec<Result<String, String>>,
    /// Devices the import created.
    pub created: u64,
    /// Devices that already existed.
    pub reused: u64,
    /// Credentials issued by this run.
    pub issued: u64,
}

/// The credentials file: `{"server": URL, "devices": {id: secret}}`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheFile {
    server: String,
    devices: BTreeMap<String, String>,
}

/// Device secrets kept between runs.
#[derive(Debug)]
pub struct CredentialCache {
    path: Option<PathBuf>,
    file: CacheFile,
}

impl CredentialCache {
    /// The cache at `path` (empty when the file does not exist, or holds another server's
    /// credentials, which are then replaced at the next save); without a path an empty cache
    /// that is never saved.
    ///
    /// # Errors
    /// When the file exists but cannot be read or parsed.
    pub fn load(path: Option<&Path>, server: &str) -> anyhow::Result<(Self, Option<String>)> {
        let mut note = None;
        let file = match path {
            None => CacheFile::default(),
            Some(path) => match std::fs::read(path) {
                Ok(bytes) => {
                    let file: CacheFile = serde_json::from_slice(&bytes).with_context(|| {
                        format!("failed to parse the credentials file {}", path.display())
                    })?;
                    if file.server == server {
                        file
                    } else {
                        note = Some(format!(
                            "the credentials in {} are for {}, not {server}: issuing new ones",
                            path.display(),
                            file.server
                        ));
                        CacheFile::default()
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => CacheFile::default(),
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("failed to read the credentials file {}", path.display())
                    });
                }
            },
        };
        let file = CacheFile { server: server.to_owned(), devices: file.devices };
        Ok((Self { path: path.map(Path::to_path_buf), file }, note))
    }

    /// The cached secret of device `id`.
    #[must_use]
    pub fn get(&self, id: &str) -> Option<&str> {
        self.file.devices.get(id).map(String::as_str)
    }

    /// Remembers the secret of device `id`.
    pub fn insert(&mut self, id: &str, token: &str) {
        self.file.devices.insert(id.to_owned(), token.to_owned());
    }

    /// Writes the cache to its file, readable only by its owner (write to a temporary file in
    /// the same directory, then rename). Does nothing without a path.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn save(&self) -> anyhow::Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        write_private(path, &serde_json::to_vec_pretty(&self.file)?)
            .with_context(|| format!("failed to write the credentials file {}", path.display()))
    }
}

/// Writes `bytes` to `path` through a temporary file readable only by its owner.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // tempfile creates its files with mode 0600.
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The REST API client used to provision devices.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    server: String,
    token: String,
}

/// The import report's fields the simulator reads.
#[derive(Debug, Deserialize)]
struct ImportReport {
    created: u64,
    updated: u64,
    unchanged: u64,
    lines: Vec<ImportLine>,
}

#[derive(Debug, Deserialize)]
struct ImportLine {
    id: Option<String>,
    reason: Option<String>,
}

impl Api {
    /// A client for the API at `server` with the bearer `token`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(server: &str, token: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            // Long enough for an import of tens of thousands of devices on a busy machine.
            .timeout(Duration::from_secs(300))
            .pool_max_idle_per_host(CREDENTIAL_REQUESTS_IN_FLIGHT)
            .build()
            .context("failed to build the HTTP client")?;
        Ok(Self { http, server: server.to_owned(), token: token.to_owned() })
    }

    /// Creates the devices `ids` that do not exist and makes every one `active`, in one import.
    /// Returns, per id, `Err(reason)` for the rejected ones, and the numbers created and reused.
    ///
    /// # Errors
    /// When the import request fails as a whole (server unreachable, bad token, …).
    pub async fn import(
        &self,
        ids: &[String],
    ) -> anyhow::Result<(BTreeMap<String, String>, u64, u64)> {
        let mut body = String::with_capacity(ids.len() * 80);
        for id in ids {
            let line = serde_json::json!({
                "id": id,
                "state": "active",
                "tags": {"simulator": "herd-sim"},
            });
            body.push_str(&line.to_string());
            body.push('\n');
        }
        let url = format!("{}/api/v1/devices:import?format=jsonl&report=rejected", self.server);
        let response = self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .body(body)
            .send()
            .await
            .with_context(|| format!("failed to reach {url}"))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            bail!("the device import was refused: {status}: {}", truncate(&text));
        }
        let report: ImportReport =
            response.json().await.context("failed to read the import report")?;
        let rejected = report
            .lines
            .into_iter()
            .filter_map(|l| {
                let reason = l.reason.unwrap_or_else(|| "rejected by the import".to_owned());
                Some((l.id?, reason))
            })
            .collect();
        Ok((rejected, report.created, report.updated + report.unchanged))
    }

    /// Issues a new credential to device `id`; returns its secret.
    ///
    /// # Errors
    /// A description of the failure, after [`CREDENTIAL_ATTEMPTS`] tries for transient ones.
    pub async fn create_credential(&self, id: &str) -> Result<String, String> {
        let url = format!("{}/api/v1/devices/{id}/credentials", self.server);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = self
                .http
                .post(&url)
                .bearer_auth(&self.token)
                .json(&serde_json::json!({}))
                .send()
                .await;
            let retry = match outcome {
                Ok(response) if response.status().is_success() => {
                    let body: serde_json::Value = response
                        .json()
                        .await
                        .map_err(|e| format!("unreadable credential response: {e}"))?;
                    return body["token"]
                        .as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| "no token in the credential response".to_owned());
                }
                Ok(response) => {
                    let status = response.status();
                    let text = response.text().await.unwrap_or_default();
                    let message = format!("credential request: {status}: {}", truncate(&text));
                    if !(status.is_server_error() || status.as_u16() == 429) {
                        return Err(message);
                    }
                    message
                }
                Err(e) => format!("credential request failed: {e}"),
            };
            if attempt >= CREDENTIAL_ATTEMPTS {
                return Err(retry);
            }
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
        }
    }
}

/// Makes sure devices `ids` exist, are active and have a secret: from `cache` when it holds
/// one, else a new credential (which `cache` then remembers). Without `api`, only the cache.
///
/// # Errors
/// When the import fails as a whole.
pub async fn provision(
    api: Option<&Api>,
    ids: &[String],
    cache: &mut CredentialCache,
) -> anyhow::Result<Provisioned> {
    let Some(api) = api else {
        let tokens = ids
            .iter()
            .map(|id| cache.get(id).map(str::to_owned).ok_or_else(|| no_credential(id)))
            .collect();
        return Ok(Provisioned { tokens, created: 0, reused: 0, issued: 0 });
    };
    let (rejected, created, reused) = api.import(ids).await?;
    let missing: Vec<usize> = (0..ids.len())
        .filter(|i| !rejected.contains_key(&ids[*i]) && cache.get(&ids[*i]).is_none())
        .collect();
    let issued_tokens: Vec<(usize, Result<String, String>)> = futures_util::stream::iter(
        missing.into_iter().map(|i| async move { (i, api.create_credential(&ids[i]).await) }),
    )
    .buffer_unordered(CREDENTIAL_REQUESTS_IN_FLIGHT)
    .collect()
    .await;
    let mut issued = 0;
    let mut fresh: BTreeMap<usize, Result<String, String>> = BTreeMap::new();
    for (i, result) in issued_tokens {
        if let Ok(token) = &result {
            cache.insert(&ids[i], token);
            issued += 1;
        }
        fresh.insert(i, result);
    }
    let tokens = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            if let Some(reason) = rejected.get(id) {
                return Err(format!("import rejected {id}: {reason}"));
            }
            match fresh.remove(&i) {
                Some(result) => result,
                None => cache.get(id).map(str::to_owned).ok_or_else(|| no_credential(id)),
            }
        })
        .collect();
    Ok(Provisioned { tokens, created, reused, issued })
}

impl Api {
    /// Checks that `group` is a symmetric-key group without a device id template (the simulated
    /// device ids are the registration ids).
    ///
    /// # Errors
    /// When it cannot be read or does not fit.
    pub async fn check_zero_touch_group(&self, group: &str) -> anyhow::Result<()> {
        let url = format!("{}/api/v1/enrollment-groups/{group}", self.server);
        let response = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("failed to reach {url}"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("cannot read enrollment group {group}: {status}: {}", truncate(&text));
        }
        let g: serde_json::Value =
            serde_json::from_str(&text).context("unreadable enrollment group")?;
        if g["attestation"] != "symmetric_key" {
            bail!(
                "enrollment group {group} uses {} attestation: --zero-touch needs symmetric_key",
                g["attestation"]
            );
        }
        if let Some(template) = g["device_id_template"].as_str() {
            bail!(
                "enrollment group {group} has the device id template {template:?}: --zero-touch \
                 needs a group without one (the simulated ids are the registration ids)"
            );
        }
        Ok(())
    }

    /// The derived keys of devices `ids` in `group`, in order, [`DERIVE_BATCH`] per request.
    ///
    /// # Errors
    /// When a request fails.
    pub async fn derive_keys(&self, group: &str, ids: &[String]) -> anyhow::Result<Vec<String>> {
        let url = format!("{}/api/v1/enrollment-groups/{group}/derive-keys", self.server);
        let mut keys = Vec::with_capacity(ids.len());
        for batch in ids.chunks(DERIVE_BATCH) {
            let response = self
                .http
                .post(&url)
                .bearer_auth(&self.token)
                .json(&serde_json::json!({ "device_ids": batch }))
                .send()
                .await
                .with_context(|| format!("failed to reach {url}"))?;
            let status = response.status();
            if !status.is_success() {
                let text = response.text().await.unwrap_or_default();
                bail!("deriving device keys was refused: {status}: {}", truncate(&text));
            }
            let body: serde_json::Value =
                response.json().await.context("unreadable derive-keys answer")?;
            let items = body["items"].as_array().map(Vec::as_slice).unwrap_or_default();
            if items.len() != batch.len() {
                bail!("the server derived {} keys for {} device ids", items.len(), batch.len());
            }
            for item in items {
                let key = item["derived_key"].as_str().context("no derived_key in the answer")?;
                keys.push(key.to_owned());
            }
        }
        Ok(keys)
    }
}

/// Registers one device with its derived key, retrying transient failures (network, 5xx, 429
/// after its `Retry-After`, at most 10 s) [`CREDENTIAL_ATTEMPTS`] times in all.
async fn register_one(
    client: &ProvisioningClient,
    group: &str,
    id: &str,
    key: &str,
) -> Result<String, String> {
    let key = decode_derived_key(key).map_err(|e| e.to_string())?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let proof =
            Proof::symmetric_key(&key, id, DEFAULT_PROOF_LIFETIME).map_err(|e| e.to_string())?;
        match client.register(&RegisterRequest::new(id, group, proof)).await {
            Ok(registration) if registration.device_id == id => return Ok(registration.secret),
            Ok(registration) => {
                return Err(format!("registered as {}, not {id}", registration.device_id));
            }
            Err(e) if e.is_retryable() && attempt < CREDENTIAL_ATTEMPTS => {
                let wait = e
                    .retry_after()
                    .unwrap_or(Duration::from_millis(200 * u64::from(attempt)))
                    .min(Duration::from_secs(10));
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(format!("registration: {e}")),
        }
    }
}

/// Zero-touch provisioning of devices `ids` through `group`: devices with a cached secret keep
/// it; the others get their keys derived in bulk and register themselves,
/// `concurrency` at a time. Returns each device's secret (or why it has none) and the figures.
///
/// # Errors
/// When the group does not fit or the keys cannot be derived.
pub async fn zero_touch(
    api: &Api,
    group: &str,
    ids: &[String],
    cache: &mut CredentialCache,
    concurrency: usize,
) -> anyhow::Result<(Vec<Result<String, String>>, ZeroTouch)> {
    let missing: Vec<usize> = (0..ids.len()).filter(|i| cache.get(&ids[*i]).is_none()).collect();
    let mut stats =
        ZeroTouch { cached: (ids.len() - missing.len()) as u64, ..ZeroTouch::default() };
    let mut fresh: BTreeMap<usize, Result<String, String>> = BTreeMap::new();
    if !missing.is_empty() {
        api.check_zero_touch_group(group).await?;
        let derive_started = Instant::now();
        let missing_ids: Vec<String> = missing.iter().map(|i| ids[*i].clone()).collect();
        let keys = api.derive_keys(group, &missing_ids).await?;
        stats.derive_secs = derive_started.elapsed().as_secs_f64();
        let client = ProvisioningClient::new(&api.server, &TlsOptions::default())
            .map_err(|e| anyhow::anyhow!("--server {}: {e}", api.server))?;
        let client = &client;
        let started = Instant::now();
        let results: Vec<(usize, Result<String, String>)> =
            futures_util::stream::iter(missing.iter().zip(keys).map(|(i, key)| async move {
                (*i, register_one(client, group, &ids[*i], &key).await)
            }))
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        stats.register_secs = started.elapsed().as_secs_f64();
        for (i, result) in results {
            match &result {
                Ok(token) => {
                    cache.insert(&ids[i], token);
                    stats.registrations += 1;
                }
                Err(_) => stats.failures += 1,
            }
            fresh.insert(i, result);
        }
        #[expect(clippy::cast_precision_loss, reason = "a rate for people")]
        let rate = stats.registrations as f64 / stats.register_secs.max(1e-9);
        stats.rate_per_sec = rate;
    }
    let tokens = ids
        .iter()
        .enumerate()
        .map(|(i, id)| match fresh.remove(&i) {
            Some(result) => result,
            None => cache.get(id).map(str::to_owned).ok_or_else(|| no_credential(id)),
        })
        .collect();
    Ok((tokens, stats))
}

fn no_credential(id: &str) -> String {
    format!("no credential for {id} in the credentials file")
}

fn truncate(text: &str) -> &str {
    let end = text.char_indices().nth(300).map_or(text.len(), |(i, _)| i);
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_round_trips_privately_and_is_per_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds.json");
        let (mut cache, note) = CredentialCache::load(Some(&path), "http://a").unwrap();
        assert!(note.is_none());
        cache.insert("sim-00001", "hdc_1");
        cache.save().unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (cache, _) = CredentialCache::load(Some(&path), "http://a").unwrap();
        assert_eq!(cache.get("sim-00001"), Some("hdc_1"));
        let (cache, note) = CredentialCache::load(Some(&path), "http://b").unwrap();
        assert_eq!(cache.get("sim-00001"), None);
        assert!(note.unwrap().contains("http://a"));
    }

    #[tokio::test]
    async fn without_an_api_only_cached_devices_can_run() {
        let (mut cache, _) = CredentialCache::load(None, "http://a").unwrap();
        cache.insert("a", "hdc_a");
        let ids = ["a".to_owned(), "b".to_owned()];
        let p = provision(None, &ids, &mut cache).await.unwrap();
        assert_eq!(p.tokens[0].as_deref(), Ok("hdc_a"));
        assert!(p.tokens[1].as_ref().unwrap_err().contains("no credential for b"));
    }
}
