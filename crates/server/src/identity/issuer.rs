//! The CA as the REST API sees it: [`http_api::CertificateIssuer`] over
//! [`CertificateAuthority`], with the configured certificate lifetime.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use domain::DeviceId;
use http_api::{CertificateIssuer, IssueError, IssuedCertificate};

use crate::identity::ca::{CaError, CertificateAuthority};

/// Issues device certificates for `POST /api/v1/devices/{id}/certificates`, each valid for
/// `lifetime` (`identity.certificate_lifetime_days`).
pub struct CaIssuer {
    ca: Arc<CertificateAuthority>,
    lifetime: Duration,
}

impl CaIssuer {
    /// An issuer signing with `ca` for `lifetime`.
    pub fn new(ca: Arc<CertificateAuthority>, lifetime: Duration) -> Self {
        Self { ca, lifetime }
    }
}

impl fmt::Debug for CaIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaIssuer").field("lifetime", &self.lifetime).finish_non_exhaustive()
    }
}

impl CertificateIssuer for CaIssuer {
    fn issue(&self, csr_pem: &str, device: &DeviceId) -> Result<IssuedCertificate, IssueError> {
        let issued =
            self.ca.issue_for_csr(csr_pem, device, self.lifetime).map_err(|e| match e {
                CaError::InvalidCsr(reason) => IssueError::InvalidCsr(reason),
                other => IssueError::Failed(other.to_string()),
            })?;
        Ok(IssuedCertificate {
            pem: issued.pem,
            serial_hex: issued.serial_hex,
            not_before: issued.not_before,
            not_after: issued.not_after,
            fingerprint_sha256: issued.fingerprint_sha256,
        })
    }

    fn ca_certificate_pem(&self) -> &str {
        self.ca.ca_pem()
    }
}

#[cfg(test)]
mod tests {
    use http_api::{CertificateIssuer as _, IssueError};
    use rcgen::{CertificateParams, KeyPair};

    use super::*;
    use crate::identity::ca::CaOptions;

    #[test]
    fn issues_for_the_device_and_reports_bad_requests() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path(), &CaOptions::default()).unwrap();
        let issuer = CaIssuer::new(Arc::new(ca), Duration::from_secs(86_400));
        let key = KeyPair::generate().unwrap();
        let csr = CertificateParams::new(vec!["other".to_owned()])
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let device = DeviceId::new("dev-1").unwrap();
        let issued = issuer.issue(&csr, &device).unwrap();
        assert!(issued.pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(issued.not_after.millis() - issued.not_before.millis() >= 86_400_000);
        assert!(issuer.ca_certificate_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let err = issuer.issue("not a csr", &device).unwrap_err();
        assert!(matches!(err, IssueError::InvalidCsr(_)), "{err:?}");
    }
}
