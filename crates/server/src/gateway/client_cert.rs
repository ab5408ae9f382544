//! Client certificates on the MQTT over TLS listener (mutual TLS).
//!
//! The TLS listener asks every client for a certificate and accepts clients without one (they
//! log in with a device credential, as an application or anonymously, as over TCP): token and
//! certificate devices share the port. A certificate that is presented must chain to a trusted CA
//! (rustls' `WebPkiClientVerifier`, [`client_verifier`]); otherwise the handshake fails. The
//! trusted CAs ([`ClientTrust`]) are the device CA and the CA certificates uploaded to X.509
//! enrollment groups that accept registrations, whose devices onboard with certificates from their
//! maker ([`refresh_client_trust`] reads those every `identity.trust_refresh_secs`).
//!
//! A chain to the CA is not enough to log in: at CONNECT ([`CertificateLogin`]) the certificate is
//! looked up in the store by its serial and must be the very certificate Herd issued (same SHA-256
//! of its DER encoding), not revoked, within its validity, and issued to the device the client
//! identifier names, whose lifecycle state must be `active`. Revoking a certificate therefore
//! takes effect at the next CONNECT, and the REST API's access-change event closes the live
//! session at once (see [`crate::gateway::enforce_access_changes`]).

use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use domain::{Attestation, CertificateSerial, Timestamp};
use mqtt_broker::{Authenticator, Identity};
use mqtt_codec::{Connect, ReasonCode};
use rustls::DistinguishedName;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use sha2::{Digest as _, Sha256};
use store::Store;
use tokio_util::sync::CancellationToken;
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

/// The client certificate verifier of the TLS listener, whose trusted CAs can change while it
/// serves: each handshake uses the verifier of the CAs trusted when it starts.
#[derive(Debug)]
pub struct ClientTrust {
    current: RwLock<Arc<dyn ClientCertVerifier>>,
    /// The device CA, always trusted.
    device_ca_pem: String,
    /// The CA certificates trusted besides the device CA, as last set (sorted).
    extra: RwLock<Vec<String>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ClientTrust {
    /// Trusts the device CA `device_ca_pem` (PEM) alone.
    ///
    /// # Errors
    /// When the PEM holds no usable CA certificate.
    pub fn new(
        device_ca_pem: &str,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> anyhow::Result<Arc<Self>> {
        let current = client_verifier(device_ca_pem, Arc::clone(&provider))?;
        Ok(Arc::new(Self {
            current: RwLock::new(current),
            device_ca_pem: device_ca_pem.to_owned(),
            extra: RwLock::new(Vec::new()),
            provider,
        }))
    }

    /// Trusts the device CA and the CA certificates `extra` (PEM each) from the next handshake on.
    /// A certificate rustls cannot use is skipped (logged): one bad upload never stops the others.
    /// Returns whether the set changed.
    pub fn set_extra(&self, mut extra: Vec<String>) -> bool {
        extra.sort();
        extra.dedup();
        if *self.extra.read().unwrap_or_else(PoisonError::into_inner) == extra {
            return false;
        }
        let mut pem = self.device_ca_pem.clone();
        for ca in &extra {
            if client_verifier(ca, Arc::clone(&self.provider)).is_ok() {
                pem.push('\n');
                pem.push_str(ca);
            } else {
                tracing::warn!(
                    "an enrollment group's CA certificate is not usable as a trust anchor"
                );
            }
        }
        match client_verifier(&pem, Arc::clone(&self.provider)) {
            Ok(verifier) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = verifier;
                *self.extra.write().unwrap_or_else(PoisonError::into_inner) = extra;
                true
            }
            Err(error) => {
                tracing::error!(error = %format!("{error:#}"), "cannot trust the enrollment CAs");
                false
            }
        }
    }

    fn verifier(&self) -> Arc<dyn ClientCertVerifier> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }
}

impl ClientCertVerifier for ClientTrust {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    /// No hints: they would have to outlive a change of the trusted CAs. Clients then send the
    /// certificate they have, which is what devices with one certificate do anyway.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verifier().verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.verifier().supported_verify_schemes()
    }
}

/// Keeps `trust` in line with the enrollment groups of `store`: every `every`, the CA
/// certificates of the X.509 groups that accept registrations now (enabled, not expired, with an
/// uploaded CA) are trusted besides the device CA. Runs until `stop` is cancelled; a store error is
/// logged and the trust kept as it was.
pub async fn refresh_client_trust(
    trust: Arc<ClientTrust>,
    store: Arc<dyn Store>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        match enrollment_cas(store.as_ref()).await {
            Ok(cas) => {
                let count = cas.len();
                if trust.set_extra(cas) {
                    tracing::info!(enrollment_cas = count, "client certificate trust updated");
                }
            }
            Err(error) => tracing::warn!(error = %error, "cannot read the enrollment groups' CAs"),
        }
    }
}

/// The uploaded CA certificates of the X.509 enrollment groups accepting registrations now.
async fn enrollment_cas(store: &dyn Store) -> Result<Vec<String>, store::StoreError> {
    let now = Timestamp::now();
    let limit =
        std::num::NonZeroU32::new(store::MAX_PAGE_SIZE).unwrap_or(std::num::NonZeroU32::MIN);
    let mut after = None;
    let mut cas = Vec::new();
    loop {
        let page = store.list_enrollment_groups(after.as_ref(), limit).await?;
        for group in &page.items {
            if let Attestation::X509 { ca_pem: Some(pem) } = &group.attestation
                && group.accepts_at(now)
            {
                cas.push(pem.clone());
            }
        }
        match page.items.last() {
            Some(last) if page.has_more => after = Some(last.name.clone()),
            _ => return Ok(cas),
        }
    }
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

    /// The certificate the client of `connection` presented, if any (the first of its chain), with
    /// the whole chain (DER).
    pub fn of_connection(
        connection: &rustls::ServerConnection,
    ) -> Option<Option<(Self, Vec<Vec<u8>>)>> {
        let Some(chain) = connection.peer_certificates() else { return Some(None) };
        let first = chain.first()?;
        let certificate = Self::from_der(first.as_ref())?;
        Some(Some((certificate, chain.iter().map(|c| c.as_ref().to_vec()).collect())))
    }
}

/// A certificate chain a client presented (DER, its own certificate first).
pub type CertificateChain = Arc<Vec<Vec<u8>>>;

/// The authenticator of one TLS connection whose client presented a certificate: the CONNECT is a
/// device logging in with that certificate (see the module documentation), or a device
/// onboarding with its maker's certificate (the bootstrap login of provisioning over MQTT, whose
/// proof is the chain).
#[derive(Debug)]
pub struct CertificateLogin {
    gateway: Arc<GatewayAuthenticator>,
    certificate: PresentedCertificate,
    /// The presented chain, until the CONNECT takes it: a connection does not keep it.
    chain: std::sync::Mutex<Option<CertificateChain>>,
}

impl CertificateLogin {
    /// The login of a client that presented `certificate` (with `chain`), checked by `gateway`.
    pub fn new(
        gateway: Arc<GatewayAuthenticator>,
        certificate: PresentedCertificate,
        chain: Vec<Vec<u8>>,
    ) -> Self {
        Self { gateway, certificate, chain: std::sync::Mutex::new(Some(Arc::new(chain))) }
    }
}

impl Authenticator for CertificateLogin {
    async fn authenticate(
        &self,
        connect: &Connect,
        peer: Option<SocketAddr>,
    ) -> Result<Identity, ReasonCode> {
        let chain = self.chain.lock().unwrap_or_else(PoisonError::into_inner).take();
        self.gateway.authenticate_certificate(connect, peer, &self.certificate, chain).await
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
