//! Client certificates on the MQTT over TLS listener (mutual TLS).
//!
//! The TLS listener asks every client for a certificate and accepts clients without one (they
//! log in with a device credential, as an application or anonymously, as over TCP): token and
//! certificate devices share the port. A certificate that is presented must chain to the device CA
//! (rustls' `WebPkiClientVerifier`, [`client_verifier`]); otherwise the handshake fails.
//!
//! A chain to the CA is not enough to log in: at CONNECT ([`CertificateLogin`]) the certificate is
//! looked up in the store by its serial and must be the very certificate Herd issued (same SHA-256
//! of its DER encoding), not revoked, within its validity, and issued to the device the client
//! identifier names, whose lifecycle state must be `active`. Revoking a certificate therefore
//! takes effect at the next CONNECT, and the REST API's access-change event closes the live
//! session at once (see [`crate::gateway::enforce_access_changes`]).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use domain::CertificateSerial;
use mqtt_broker::{Authenticator, Identity};
use mqtt_codec::{Connect, ReasonCode};
use rustls::pki_types::CertificateDer;
use rustls::server::danger::ClientCertVerifier;
use sha2::{Digest as _, Sha256};
use x509_parser::prelude::FromDer as _;

use crate::gateway::GatewayAuthenticator;

/// The verifier of client certificates: chains to `roots` (PEM certificates, the device CA), or
/// no certificate at all.
///
/// # Errors
/// When `roots_pem` holds no certificate or one rustls cannot use as a trust anchor.
pub fn client_verifier(
    roots_pem: &str,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
        let cert = cert.context("cannot read the device CA certificate")?;
        roots.add(cert).context("the device CA certificate is not a usable trust anchor")?;
    }
    anyhow::ensure!(!roots.is_empty(), "the device CA holds no certificate");
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .context("cannot build the client certificate verifier")
}

/// What identifies a certificate a client presented: its serial and the SHA-256 of its DER
/// encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedCertificate {
    /// The serial as the CA encodes it (lowercase hex of its bytes).
    pub serial: CertificateSerial,
    /// SHA-256 of the DER encoding, lowercase hex.
    pub fingerprint_sha256: String,
}

impl PresentedCertificate {
    /// Reads the end-entity certificate `der`; `None` when it is not an X.509 certificate or its
    /// serial is not one a CA of Herd's would issue (empty, longer than 20 bytes).
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
        let serial = CertificateSerial::new(hex::encode(cert.raw_serial())).ok()?;
        Some(Self { serial, fingerprint_sha256: hex::encode(Sha256::digest(der)) })
    }

    /// The certificate the client of `connection` presented, if any (the first of its chain).
    pub fn of_connection(connection: &rustls::ServerConnection) -> Option<Option<Self>> {
        match connection.peer_certificates().and_then(|chain| chain.first()) {
            None => Some(None),
            Some(der) => Self::from_der(der.as_ref()).map(Some),
        }
    }
}

/// The authenticator of one TLS connection whose client presented a certificate: the CONNECT is a
/// device logging in with that certificate (see the module documentation).
#[derive(Debug)]
pub struct CertificateLogin {
    gateway: Arc<GatewayAuthenticator>,
    certificate: PresentedCertificate,
}

impl CertificateLogin {
    /// The login of a client that presented `certificate`, checked by `gateway`.
    pub fn new(gateway: Arc<GatewayAuthenticator>, certificate: PresentedCertificate) -> Self {
        Self { gateway, certificate }
    }
}

impl Authenticator for CertificateLogin {
    async fn authenticate(
        &self,
        connect: &Connect,
        peer: Option<SocketAddr>,
    ) -> Result<Identity, ReasonCode> {
        self.gateway.authenticate_certificate(connect, peer, &self.certificate).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_presented_certificate_is_named_by_its_serial_and_fingerprint() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["x".to_owned()]).unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x0a, 0xbc, 0xde]));
        let cert = params.self_signed(&key).unwrap();
        let presented = PresentedCertificate::from_der(cert.der()).unwrap();
        assert_eq!(presented.serial.as_str(), "0abcde");
        assert_eq!(presented.fingerprint_sha256, hex::encode(Sha256::digest(cert.der())));
        assert_eq!(PresentedCertificate::from_der(b"not a certificate"), None);
    }

    #[test]
    fn the_verifier_needs_a_ca_certificate() {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let err = client_verifier("", Arc::clone(&provider)).unwrap_err();
        assert!(format!("{err:#}").contains("no certificate"), "{err:#}");
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let verifier = client_verifier(&ca.pem(), provider).unwrap();
        assert!(verifier.offer_client_auth());
        assert!(!verifier.client_auth_mandatory());
    }
}
