//! The device certificate authority: creating or loading it, and signing device certificates.
//!
//! Herd creates its CA on first start: an ECDSA P-256 key in `ca.key` (PEM, PKCS#8, mode 0600 from
//! the moment the file exists, written to a temporary file and renamed so that a crash never leaves
//! half a key) and a self-signed CA certificate in `ca.pem`. Later starts load both and refuse a
//! key file other users can read, a key that is not the certificate's, or a certificate that is
//! not a CA. An external CA ([`CertificateAuthority::from_files`]) goes through the same checks.
//!
//! # What an issued certificate says
//! A device certificate is built from scratch: only the public key comes from the request, after
//! its signature was verified. Subject, subject alternative names and extensions asked for in the
//! request are ignored, so a device cannot obtain a certificate naming another device, a server
//! or a CA.
//! - Subject: `CN=<device id>`, nothing else.
//! - Subject alternative name: one URI, `urn:herd:device:<device id>`. Not a DNS name: device ids
//!   may hold `:` and `_`, which are not valid in DNS names, and a device certificate must never
//!   pass as a server's certificate for some host name. Every device id character
//!   (`[A-Za-z0-9._:-]`) is valid in a URN as is.
//! - Basic constraints: not a CA. Key usage: digital signature. Extended key usage: TLS client
//!   authentication only.
//! - Serial: 16 random bytes (the top bit cleared, so it is a positive 127-bit number).
//! - Validity: from 5 minutes ago (devices' clocks drift) for the requested lifetime, which must
//!   end before the CA certificate does.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use domain::{DeviceId, Timestamp};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData as _,
    SanType, SerialNumber,
};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer as _;

/// File name of the CA certificate in the CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key in the CA directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// The prefix of the URI subject alternative name of device certificates, before the device id.
pub const DEVICE_URI_PREFIX: &str = "urn:herd:device:";

/// How far back an issued certificate's validity starts, for devices whose clock runs behind.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// How Herd's own CA is made when it is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaOptions {
    /// Common name of the CA certificate's subject.
    pub common_name: String,
    /// Organization of the CA certificate's subject, if any.
    pub organization: Option<String>,
    /// How long the CA certificate is valid.
    pub validity: Duration,
}

impl Default for CaOptions {
    fn default() -> Self {
        Self {
            common_name: "Herd device CA".to_owned(),
            organization: None,
            validity: Duration::from_secs(10 * 365 * 24 * 3600),
        }
    }
}

/// What went wrong creating or loading a CA, or issuing a certificate.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file or directory could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file or directory could not be created or written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The CA key file may be read by other users than its owner.
    #[error("{} is readable by other users; run chmod 600 on it", path.display())]
    KeyNotPrivate {
        /// The key file.
        path: PathBuf,
    },
    /// A file does not hold what it should.
    #[error("{}: {reason}", path.display())]
    InvalidFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key is not the one of the certificate.
    #[error("{} is not the private key of the certificate in {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// One of the CA's two files exists without the other.
    #[error(
        "{} exists but {} does not; restore it from a backup, or move {} away to create a new CA \
         (certificates it signed will no longer be accepted)",
        present.display(), missing.display(), present.display()
    )]
    Incomplete {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// The certificate signing request is unusable; the reason can be shown to the requester.
    #[error("invalid certificate signing request: {0}")]
    InvalidCsr(String),
    /// The requested certificate lifetime is zero or outlasts the CA certificate.
    #[error("invalid certificate lifetime: {0}")]
    InvalidLifetime(String),
    /// Generating a key or signing failed.
    #[error("cannot sign: {0}")]
    Signing(String),
}

/// A certificate the CA issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// The certificate, PEM.
    pub pem: String,
    /// The serial number as lowercase hex digits, as encoded in the certificate.
    pub serial_hex: String,
    /// Start of validity (whole seconds).
    pub not_before: Timestamp,
    /// End of validity (whole seconds).
    pub not_after: Timestamp,
    /// SHA-256 of the certificate's DER encoding, lowercase hex.
    pub fingerprint_sha256: String,
}

/// A certificate authority that signs device certificates.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    cert_path: PathBuf,
    not_after: OffsetDateTime,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("CertificateAuthority")
            .field("cert_path", &self.cert_path)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Loads Herd's own CA from `dir` (`ca.pem` and `ca.key`), creating both (and `dir`, mode
    /// 0700) when neither exists.
    ///
    /// Blocking: file I/O and key generation.
    ///
    /// # Errors
    /// [`CaError`] naming the file: unreadable or unwritable, only one of the two present, a key
    /// other users can read, unparsable content, a key that is not the certificate's.
    pub fn load_or_create(dir: &Path, options: &CaOptions) -> Result<Self, CaError> {
        let cert = dir.join(CA_CERT_FILE);
        let key = dir.join(CA_KEY_FILE);
        match (exists(&cert)?, exists(&key)?) {
            (true, true) => Self::from_files(&cert, &key),
            (false, false) => Self::create(dir, options),
            (true, false) => Err(CaError::Incomplete { present: cert, missing: key }),
            (false, true) => Err(CaError::Incomplete { present: key, missing: cert }),
        }
    }

    /// Loads a CA from a PEM certificate file and a PEM private key file (PKCS#8, or SEC1/PKCS#1).
    ///
    /// Blocking: file I/O.
    ///
    /// # Errors
    /// [`CaError`] naming the file: unreadable, a key other users can read, unparsable content, a
    /// certificate that is not a CA or has expired, a key that is not the certificate's.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, CaError> {
        check_private(key)?;
        let key_pem = std::fs::read_to_string(key)
            .map_err(|source| CaError::Read { path: key.to_owned(), source })?;
        let cert_pem = std::fs::read_to_string(cert)
            .map_err(|source| CaError::Read { path: cert.to_owned(), source })?;
        let key_pair = KeyPair::from_pem(&key_pem).map_err(|e| CaError::InvalidFile {
            path: key.to_owned(),
            reason: format!("not a PEM private key ({e})"),
        })?;
        Self::from_pem(cert, cert_pem, key, key_pair)
    }

    /// The CA certificate, PEM: what devices and TLS listeners trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The file the CA certificate was loaded from.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// Signs a certificate for `device_id` valid for `lifetime`, taking only the public key from
    /// `csr_pem` (see the module documentation for what the certificate says).
    ///
    /// # Errors
    /// [`CaError::InvalidCsr`] when the request is not a PEM certificate signing request, its
    /// signature does not verify, or its key or an extension it asks for is not supported;
    /// [`CaError::InvalidLifetime`] when `lifetime` is zero or ends after the CA certificate.
    pub fn issue_for_csr(
        &self,
        csr_pem: &str,
        device_id: &DeviceId,
        lifetime: Duration,
    ) -> Result<IssuedCertificate, CaError> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes())
            .map_err(|_| CaError::InvalidCsr("not PEM".to_owned()))?;
        if pem.label != "CERTIFICATE REQUEST" && pem.label != "NEW CERTIFICATE REQUEST" {
            return Err(CaError::InvalidCsr(format!(
                "expected a CERTIFICATE REQUEST PEM block, got {:?}",
                pem.label
            )));
        }
        let (_, parsed) = X509CertificationRequest::from_der(&pem.contents)
            .map_err(|_| CaError::InvalidCsr("not a certificate signing request".to_owned()))?;
        let requested_spki = parsed.certification_request_info.subject_pki.raw;
        // Parses again and verifies the request's signature with its own key.
        let csr = CertificateSigningRequestParams::from_der(&pem.contents.as_slice().into())
            .map_err(|e| CaError::InvalidCsr(csr_problem(&e)))?;

        if lifetime.is_zero() {
            return Err(CaError::InvalidLifetime("must be longer than zero".to_owned()));
        }
        let now = now_whole_seconds();
        let not_before = now - CLOCK_SKEW;
        let not_after = time::Duration::try_from(lifetime)
            .ok()
            .and_then(|l| now.checked_add(l))
            .filter(|end| *end <= self.not_after)
            .ok_or_else(|| {
                CaError::InvalidLifetime(format!(
                    "{} days would outlast the CA certificate, valid until {}",
                    lifetime.as_secs() / 86_400,
                    self.not_after
                ))
            })?;

        let mut params = CertificateParams::default();
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, device_id.as_str());
        params.distinguished_name = subject;
        let uri = format!("{DEVICE_URI_PREFIX}{device_id}")
            .try_into()
            .map_err(|e| CaError::Signing(format!("device URI: {e}")))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|e| CaError::Signing(e.to_string()))?;

        let der = cert.der();
        let (_, issued) = X509Certificate::from_der(der)
            .map_err(|e| CaError::Signing(format!("cannot read back the certificate: {e}")))?;
        // rcgen re-encodes the request's key from its signature algorithm; a key it would encode
        // differently (a curve that does not match the hash, say) is refused rather than changed.
        if issued.public_key().raw != requested_spki {
            return Err(CaError::InvalidCsr("unsupported key type".to_owned()));
        }
        Ok(IssuedCertificate {
            pem: cert.pem(),
            serial_hex: hex::encode(issued.raw_serial()),
            not_before: timestamp(not_before),
            not_after: timestamp(not_after),
            fingerprint_sha256: hex::encode(Sha256::digest(der.as_ref())),
        })
    }

    /// Creates a new CA in `dir`: key first (never readable by others), then certificate.
    fn create(dir: &Path, options: &CaOptions) -> Result<Self, CaError> {
        create_private_dir(dir)?;
        let key_pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Signing(format!("cannot generate the CA key: {e}")))?;
        let mut params = CertificateParams::default();
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, options.common_name.as_str());
        if let Some(org) = &options.organization {
            subject.push(DnType::OrganizationName, org.as_str());
        }
        params.distinguished_name = subject;
        // Path length 0: it signs device certificates only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial());
        let now = now_whole_seconds();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = time::Duration::try_from(options.validity)
            .ok()
            .and_then(|v| now.checked_add(v))
            .ok_or_else(|| CaError::Signing("the CA validity is too long".to_owned()))?;
        let cert = params
            .self_signed(&key_pair)
            .map_err(|e| CaError::Signing(format!("cannot sign the CA certificate: {e}")))?;

        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        write_atomically(&key_path, key_pair.serialize_pem().as_bytes(), 0o600)?;
        let cert_pem = cert.pem();
        write_atomically(&cert_path, cert_pem.as_bytes(), 0o644)?;
        if let Ok(d) = std::fs::File::open(dir) {
            // Makes the renames durable; failing to is not worth refusing to start.
            let _ = d.sync_all();
        }
        Self::from_pem(&cert_path, cert_pem, &key_path, key_pair)
    }

    /// Checks the CA certificate and that `key_pair` is its key, and builds the CA.
    fn from_pem(
        cert_path: &Path,
        cert_pem: String,
        key_path: &Path,
        key_pair: KeyPair,
    ) -> Result<Self, CaError> {
        let invalid = |reason: String| CaError::InvalidFile { path: cert_path.to_owned(), reason };
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|_| invalid("not a PEM certificate".to_owned()))?;
        let cert = pem.parse_x509().map_err(|e| invalid(format!("not a certificate ({e})")))?;
        let is_ca = cert.basic_constraints().ok().flatten().is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(invalid(
                "not a CA certificate (basic constraints CA:TRUE missing)".to_owned(),
            ));
        }
        let not_after = cert.validity().not_after.to_datetime();
        if not_after <= OffsetDateTime::now_utc() {
            return Err(invalid(format!("the CA certificate expired on {not_after}")));
        }
        if cert.public_key().raw != key_pair.subject_public_key_info().as_slice() {
            return Err(CaError::KeyMismatch {
                cert: cert_path.to_owned(),
                key: key_path.to_owned(),
            });
        }
        let issuer = Issuer::from_ca_cert_der(&pem.contents.as_slice().into(), key_pair)
            .map_err(|e| invalid(format!("unusable CA certificate ({e})")))?;
        Ok(Self { issuer, ca_pem: cert_pem, cert_path: cert_path.to_owned(), not_after })
    }
}

/// A reason for a refused request, fit to show to whoever sent it.
fn csr_problem(e: &rcgen::Error) -> String {
    match e {
        rcgen::Error::CouldNotParseCertificationRequest => {
            "not a certificate signing request".to_owned()
        }
        rcgen::Error::InvalidCertificationRequestSignature => {
            "its signature does not verify with its key".to_owned()
        }
        rcgen::Error::UnsupportedSignatureAlgorithm => {
            "unsupported key type or signature algorithm".to_owned()
        }
        rcgen::Error::UnsupportedExtension => "it asks for an unsupported extension".to_owned(),
        other => other.to_string(),
    }
}

/// 16 random bytes with the top bit cleared: a positive serial of up to 127 bits.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// Now, without the fraction of a second a certificate cannot hold.
fn now_whole_seconds() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

fn timestamp(t: OffsetDateTime) -> Timestamp {
    Timestamp::from_millis(t.unix_timestamp().saturating_mul(1000))
}

pub(crate) fn exists(path: &Path) -> Result<bool, CaError> {
    path.try_exists().map_err(|source| CaError::Read { path: path.to_owned(), source })
}

/// Refuses a key file that users other than its owner may read or write.
pub(crate) fn check_private(path: &Path) -> Result<(), CaError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(path)
            .map_err(|source| CaError::Read { path: path.to_owned(), source })?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(CaError::KeyNotPrivate { path: path.to_owned() });
        }
    }
    Ok(())
}

pub(crate) fn create_private_dir(dir: &Path) -> Result<(), CaError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| CaError::Write { path: dir.to_owned(), source })
}

/// Writes `contents` to a temporary file created with `mode`, then renames it to `path`: `path`
/// either does not exist or is whole, and never has looser permissions than `mode`.
pub(crate) fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    let write_err = |source| CaError::Write { path: path.to_owned(), source };
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    // Left over by a crash during an earlier attempt.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(write_err(e)),
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&tmp).map_err(write_err)?;
    file.write_all(contents).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(write_err)
}

#[cfg(test)]
mod tests;
