//! Renewing the device's login material: its client certificate some days before it ends, and its
//! certificate or credential when Herd asks (`devices/{id}/identity/rotate`), over MQTT with the
//! SDK's `identity` module.
//!
//! A renewed certificate and key, or credential, is written over the configured file (a temporary
//! file in the same directory, flushed to disk, then renamed over it; mode 0600 for secrets) and
//! handed to the device task, which logs in with it from its next connection on. The old one
//! keeps working until an operator revokes it, so a renewal never cuts the device off. A renewal
//! that fails is logged and tried again at the next check.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use device_agent::identity::{self, Answer, CertificateRequest, CredentialRequest};
use device_agent::{DeviceHandle, Inbox};

use crate::settings::Settings;

/// How long the agent waits for Herd's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Renews the login material of `settings` through `device`.
#[derive(Debug)]
pub struct Renewer<'a> {
    /// The device task.
    pub device: &'a DeviceHandle,
    /// What to renew and where it is kept.
    pub settings: &'a Settings,
}

impl Renewer<'_> {
    /// Whether the client certificate ends within `settings.renew_before` (or cannot be read, so
    /// a renewal is the way out); `false` without a client certificate.
    pub fn certificate_due(&self) -> bool {
        let Some((cert_file, _)) = &self.settings.client_cert else { return false };
        let not_after = fs::read_to_string(cert_file)
            .ok()
            .and_then(|pem| identity::certificate_not_after(&pem));
        match not_after {
            Some(end) => {
                let renew_at = end.checked_sub(self.settings.renew_before).unwrap_or(end);
                SystemTime::now() >= renew_at
            }
            None => {
                tracing::warn!(file = %cert_file.display(), "cannot read the client certificate's end");
                true
            }
        }
    }

    /// Asks Herd for a new certificate, stores it with its new key and logs in with them from the
    /// next connection on.
    ///
    /// # Errors
    /// When there is no client certificate to renew, Herd refuses or does not answer, or the
    /// files cannot be written.
    pub async fn renew_certificate(&self, inbox: &mut Inbox) -> anyhow::Result<()> {
        let Some((cert_file, key_file)) = &self.settings.client_cert else {
            bail!("the agent has no client certificate to renew (client_cert_file)");
        };
        let request = CertificateRequest::generate(&self.settings.device_id)?;
        let answer = identity::exchange(
            self.device,
            inbox,
            CertificateRequest::channel(),
            request.payload(),
            &request.request_id,
            ANSWER_TIMEOUT,
            |other| tracing::debug!(topic = other.topic, "ignored during a renewal"),
        )
        .await?;
        let certificate_pem = match answer {
            Answer::CertificateIssued { certificate_pem, serial, .. } => {
                tracing::info!(serial, "new client certificate issued");
                certificate_pem
            }
            Answer::Refused { code, message, .. } => {
                bail!("Herd refused the certificate renewal: {code}: {message}")
            }
            Answer::CredentialCreated { .. } => bail!("Herd answered another request"),
        };
        // The key first: a certificate without its key would be useless, a key without its
        // certificate is harmless until the certificate follows.
        write_file(key_file, request.key_pem.as_bytes(), true)?;
        write_file(cert_file, certificate_pem.as_bytes(), false)?;
        self.device
            .set_client_certificate(&certificate_pem, &request.key_pem)
            .await
            .context("the device task cannot use the new certificate")?;
        Ok(())
    }

    /// Registers a new credential with Herd, stores it and logs in with it from the next
    /// connection on.
    ///
    /// # Errors
    /// When there is no credential file, Herd refuses or does not answer, or the file cannot be
    /// written.
    pub async fn renew_credential(&self, inbox: &mut Inbox) -> anyhow::Result<()> {
        let Some(credential_file) = &self.settings.credential_file else {
            bail!("the agent has no credential to renew (credential_file)");
        };
        let request = CredentialRequest::generate(None);
        let answer = identity::exchange(
            self.device,
            inbox,
            CredentialRequest::channel(),
            request.payload(),
            &request.request_id,
            ANSWER_TIMEOUT,
            |other| tracing::debug!(topic = other.topic, "ignored during a renewal"),
        )
        .await?;
        match answer {
            Answer::CredentialCreated { credential_id, .. } => {
                tracing::info!(credential_id, "new credential registered");
            }
            Answer::Refused { code, message, .. } => {
                bail!("Herd refused the credential renewal: {code}: {message}")
            }
            Answer::CertificateIssued { .. } => bail!("Herd answered another request"),
        }
        write_file(credential_file, format!("{}\n", request.secret).as_bytes(), true)?;
        self.device.set_password(&request.secret).await.context("the device task has stopped")?;
        Ok(())
    }
}

/// Replaces `path` with `contents`: a temporary file beside it, flushed to disk, renamed over it.
/// `secret` files are created with mode 0600.
pub(crate) fn write_file(path: &Path, contents: &[u8], secret: bool) -> anyhow::Result<()> {
    let name = path.file_name().context("the file has no name")?.to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.new"));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true).mode(if secret { 0o600 } else { 0o644 });
    let write = || -> std::io::Result<()> {
        let mut file = options.open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn files_are_replaced_whole_and_secrets_stay_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credential");
        fs::write(&path, "old").unwrap();
        write_file(&path, b"new", true).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    }
}
