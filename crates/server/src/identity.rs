//! Device identities backed by X.509 certificates: the certificate authority that signs them.
//!
//! - [`ca`] holds [`ca::CertificateAuthority`]: Herd's own device CA, created on first start in
//!   `<data dir>/ca/`, or an external one from configured files. It turns a device's certificate
//!   signing request into a client certificate naming that device (and nothing the request asked
//!   for).

pub mod ca;
