//! Zero-touch provisioning on the first start: while the device has no credential yet, the agent
//! registers through its enrollment group (the SDK's `provisioning`) over HTTPS, or, without
//! `provisioning.url`, over MQTT on its server with the bootstrap login (an X.509 group's devices
//! present their maker's certificate there), stores what it receives and goes on with it.
//!
//! The credential is written to `credential_file` (mode 0600, atomically, like a renewal); with
//! `csr = true` a fresh key and the issued certificate go to `client_key_file` (0600) and
//! `client_cert_file`, and the CA that issued it to `data_dir/device-ca.pem`; the device id the
//! registration gave is kept in `data_dir/device_id`, so later starts need neither the
//! registration nor `device_id` in the configuration. Attempts that may succeed later (network
//! errors, 5xx, 429) are retried with a jittered doubling back-off, honouring `Retry-After`; a
//! refusal (401, 403, 409, other 4xx) stops the agent ([`RunError::RegistrationRefused`], exit
//! code 3).

use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use device_agent::identity::CertificateRequest;
use device_agent::provisioning::{
    Proof, ProvisionError, ProvisioningClient, RegisterRequest, register_mqtt,
};
use device_agent::{Backoff, DeviceConfig, TlsOptions, backoff_delay};

use crate::daemon::RunError;
use crate::renewal::write_file;
use crate::settings::{DEVICE_ID_FILE, Provisioning, ProvisioningProof, Settings};

/// The CA certificate of an issued client certificate, in the data directory.
pub const DEVICE_CA_FILE: &str = "device-ca.pem";

/// Registers the device when `settings` say it must, retrying until it is registered, refused,
/// or `shutdown` completes; returns the settings to run with (`None`: shut down meanwhile).
///
/// # Errors
/// [`RunError::RegistrationRefused`] for a refusal; [`RunError::Other`] for a configuration the
/// SDK rejects or files that cannot be written.
pub async fn ensure_registered(
    settings: &Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<Option<Settings>, RunError> {
    let Some(p) = settings.provisioning.as_ref().filter(|p| p.pending) else {
        return Ok(Some(settings.clone()));
    };
    tokio::pin!(shutdown);
    tokio::select! {
        registered = register(settings, p) => registered.map(Some),
        () = &mut shutdown => Ok(None),
    }
}

/// Where a registration goes: Herd's HTTP API, or its MQTT server with the bootstrap login.
enum Channel {
    Https(ProvisioningClient),
    Mqtt(Box<DeviceConfig>),
}

impl Channel {
    fn new(settings: &Settings, p: &Provisioning) -> Result<Self, RunError> {
        let other =
            |e: &dyn std::fmt::Display| RunError::Other(anyhow::anyhow!("provisioning: {e}"));
        if let Some(url) = &p.url {
            let tls =
                TlsOptions { ca_file: p.ca_file.clone(), server_name: None, client_cert: None };
            let client = ProvisioningClient::new(url, &tls).map_err(|e| other(&e))?;
            return Ok(Self::Https(client.with_timeout(p.timeout)));
        }
        // The MQTT server, with the maker's certificate as client certificate for X.509.
        let mut device = settings.clone();
        device.client_cert = match &p.proof {
            ProvisioningProof::X509 { cert_file, key_file } => {
                Some((cert_file.clone(), key_file.clone()))
            }
            _ => None,
        };
        device.token = String::new();
        device.device_id.clone_from(&p.registration_id);
        let config = crate::daemon::device_config(&device).map_err(|e| other(&e))?;
        Ok(Self::Mqtt(Box::new(config)))
    }

    async fn register(
        &self,
        request: &RegisterRequest,
        timeout: Duration,
    ) -> Result<device_agent::provisioning::Registration, ProvisionError> {
        match self {
            Self::Https(client) => client.register(request).await,
            Self::Mqtt(config) => register_mqtt(config, request, None, timeout).await,
        }
    }
}

async fn register(settings: &Settings, p: &Provisioning) -> Result<Settings, RunError> {
    let client = Channel::new(settings, p)?;
    let backoff = Backoff { initial: Duration::from_secs(1), max: p.retry_max, jitter: 0.5 };
    let mut attempt: u32 = 0;
    loop {
        // A fresh proof (and key) each attempt: a proof expires, and a key is cheap.
        let certificate = if p.csr {
            Some(CertificateRequest::generate(&p.registration_id).context("provisioning")?)
        } else {
            None
        };
        let proof = match &p.proof {
            ProvisioningProof::DerivedKey(key) => {
                Proof::symmetric_key(key, &p.registration_id, p.proof_lifetime)
                    .map_err(|e| RunError::Other(anyhow::anyhow!("provisioning: {e}")))?
            }
            ProvisioningProof::ClaimCode(code) => Proof::claim_code(code),
            ProvisioningProof::X509 { .. } => Proof::X509,
        };
        let mut request = RegisterRequest::new(&p.registration_id, &p.enrollment_group, proof);
        if let Some(c) = &certificate {
            request = request.with_csr(&c.csr_pem);
        }
        tracing::info!(
            registration_id = p.registration_id,
            group = p.enrollment_group,
            over = p.url.as_deref().unwrap_or("mqtt"),
            "registering"
        );
        match client.register(&request, p.timeout).await {
            Ok(registration) => {
                tracing::info!(
                    device_id = registration.device_id,
                    created = registration.created,
                    "registered"
                );
                return store(settings, &registration, certificate.as_ref())
                    .map_err(RunError::Other);
            }
            Err(e) if e.is_retryable() => {
                let mut rng = rand::rng();
                let mut wait = backoff_delay(attempt, &backoff, &mut rng);
                if let Some(after) = e.retry_after() {
                    wait = wait.max(after);
                }
                attempt = attempt.saturating_add(1);
                tracing::warn!(error = %e, retry_in = ?wait, "registration failed; retrying");
                tokio::time::sleep(wait).await;
            }
            Err(e @ (ProvisionError::Refused { .. } | ProvisionError::LoginRefused(_))) => {
                return Err(RunError::RegistrationRefused(e.to_string()));
            }
            Err(e) => return Err(RunError::Other(anyhow::anyhow!("provisioning: {e}"))),
        }
    }
}

/// Writes what the registration gave and returns the settings that use it.
fn store(
    settings: &Settings,
    registration: &device_agent::provisioning::Registration,
    certificate: Option<&CertificateRequest>,
) -> anyhow::Result<Settings> {
    let mut settings = settings.clone();
    std::fs::create_dir_all(&settings.data_dir).with_context(|| {
        format!("cannot create the data directory {}", settings.data_dir.display())
    })?;
    if let (Some(request), Some((cert_file, key_file)), Some(pem)) =
        (certificate, &settings.client_cert, &registration.certificate_pem)
    {
        write_file(key_file, request.key_pem.as_bytes(), true)?;
        write_file(cert_file, pem.as_bytes(), false)?;
        if let Some(ca) = &registration.ca_pem {
            write_file(&settings.data_dir.join(DEVICE_CA_FILE), ca.as_bytes(), false)?;
        }
    }
    write_file(&settings.data_dir.join(DEVICE_ID_FILE), registration.device_id.as_bytes(), false)?;
    // The credential last: its existence is what tells a later start the device is registered.
    if let Some(credential_file) = &settings.credential_file {
        write_file(credential_file, format!("{}\n", registration.secret).as_bytes(), true)?;
    }
    if !settings.device_id.is_empty() && settings.device_id != registration.device_id {
        tracing::warn!(
            configured = settings.device_id,
            registered = registration.device_id,
            "the configured device_id differs from the registered one; using the registered one"
        );
    }
    settings.device_id.clone_from(&registration.device_id);
    settings.token.clone_from(&registration.secret);
    if let Some(p) = &mut settings.provisioning {
        p.pending = false;
    }
    Ok(settings)
}
