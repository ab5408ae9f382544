//! [`TestCerts`]: a throwaway certificate authority and a server certificate it signed, as PEM
//! files, for the MQTT over TLS listener and for the clients that verify it (rustls, Mosquitto,
//! paho-mqtt).

use std::net::SocketAddr;
use std::path::PathBuf;

use rustls::pki_types::CertificateDer;
use server::config::MqttTlsConfig;

/// A CA and a server certificate for `localhost` and 127.0.0.1 signed by it, as PEM files in a
/// temporary directory: `ca.pem`, `cert.pem` and `key.pem` (mode 0600, like a real key file).
/// The directory is removed when the value is dropped.
#[derive(Debug)]
pub struct TestCerts {
    dir: tempfile::TempDir,
    ca: CertificateDer<'static>,
}

impl TestCerts {
    /// Generates the CA, the server key and certificate, and writes the files.
    ///
    /// # Panics
    /// When generating or writing fails: a test cannot go on without them.
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let dir = tempfile::tempdir().expect("temporary directory");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "Herd test CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().expect("server key");
        let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("server params");
        let cert = params.signed_by(&key, &issuer).expect("server certificate");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write ca.pem");
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).expect("write cert.pem");
        let key_file = dir.path().join("key.pem");
        std::fs::write(&key_file, key.serialize_pem()).expect("write key.pem");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))
                .expect("chmod 600");
        }
        Self { dir, ca: ca.der().clone() }
    }

    /// The path of one of the files: `ca.pem`, `cert.pem` or `key.pem`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The CA certificate (DER), for a client's root store.
    pub fn ca(&self) -> CertificateDer<'static> {
        self.ca.clone()
    }

    /// The server's TLS settings: listen on 127.0.0.1 port 0 with these files.
    pub fn config(&self) -> MqttTlsConfig {
        MqttTlsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            cert_file: self.path("cert.pem"),
            key_file: self.path("key.pem"),
        }
    }
}

impl Default for TestCerts {
    fn default() -> Self {
        Self::new()
    }
}
