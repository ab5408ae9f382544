//! Device identities backed by X.509 certificates: the certificate authority that signs them.
//!
//! - [`ca`] holds [`ca::CertificateAuthority`]: Herd's own device CA, created on first start in
//!   `<data dir>/ca/`, or an external one from configured files. It turns a device's certificate
//!   signing request into a client certificate naming that device (and nothing the request asked
//!   for).
//! - [`issuer`] holds [`issuer::CaIssuer`]: the CA with the configured certificate lifetime, as
//!   the REST API's `CertificateIssuer` (`POST /api/v1/devices/{id}/certificates`).
//! - [`rotation`] answers devices that renew their own certificate (from a CSR) or credential over
//!   MQTT (`devices/{id}/identity/…`).
//! - [`provision_mqtt`] answers devices that provision themselves over MQTT (the `$provision`
//!   bootstrap login, `$herd/provision/{registration id}/…`) through the REST API's
//!   `Provisioner`.
//! - [`secrets`] holds the master key (`<data dir>/identity/master.key`, created on first start)
//!   that seals enrollment secrets, lent to the REST API as its `SecretBox`.

pub mod ca;
pub mod issuer;
pub mod provision_mqtt;
pub mod rotation;
pub mod secrets;
