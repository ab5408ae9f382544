//! Secrets at rest and the symmetric-key proof of provisioning.
//!
//! - [`SecretBox`] seals small secrets (an enrollment group's key) with AES-256-GCM under the
//!   server's 32-byte master key: a random 96-bit nonce, then the ciphertext and its tag. The
//!   associated data binds a sealed value to what it belongs to (the group's name), so a sealed
//!   key copied onto another row does not open.
//! - [`derive_device_key`] is what a factory burns into a device: HMAC-SHA256 of the device id
//!   under the group key. [`proof_signature`] is what the device sends when it registers:
//!   HMAC-SHA256 of `"<registration_id>\n<expires_at>"` under its derived key;
//!   [`verify_proof_signature`] checks it in constant time.
//!
//! These live here rather than in `domain` so that `domain` stays free of crypto libraries.

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hmac;
use rand::TryRngCore;
use rand::rngs::OsRng;

/// Length of a [`SecretBox`] key and of an enrollment group key, in bytes.
pub const KEY_LEN: usize = 32;

/// Why a [`SecretBox`] could not seal or open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The key is not [`KEY_LEN`] bytes.
    #[error("a secret box key is {KEY_LEN} bytes, not {0}")]
    KeyLength(usize),
    /// The sealed value is damaged, was sealed with another key or for another owner.
    #[error("the sealed secret does not open with this key")]
    Open,
    /// The operating system's random number generator failed, or encryption failed.
    #[error("sealing failed: {0}")]
    Seal(&'static str),
}

/// AES-256-GCM under the server's master key, for secrets stored in the database.
pub struct SecretBox {
    key: LessSafeKey,
}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBox { .. }")
    }
}

impl SecretBox {
    /// A box sealing with `key`.
    ///
    /// # Errors
    /// [`SecretError::KeyLength`] when `key` is not [`KEY_LEN`] bytes.
    pub fn new(key: &[u8]) -> Result<Self, SecretError> {
        if key.len() != KEY_LEN {
            return Err(SecretError::KeyLength(key.len()));
        }
        let key =
            UnboundKey::new(&AES_256_GCM, key).map_err(|_| SecretError::KeyLength(key.len()))?;
        Ok(Self { key: LessSafeKey::new(key) })
    }

    /// Seals `plaintext` for `owner` (associated data, not secret): nonce, ciphertext, tag.
    ///
    /// # Errors
    /// [`SecretError::Seal`] when no random nonce can be drawn or encryption fails.
    pub fn seal(&self, owner: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.try_fill_bytes(&mut nonce).map_err(|_| SecretError::Seal("no random nonce"))?;
        let mut out = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(owner),
                &mut out,
            )
            .map_err(|_| SecretError::Seal("encryption failed"))?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + out.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&out);
        Ok(sealed)
    }

    /// Opens what [`SecretBox::seal`] sealed for `owner`.
    ///
    /// # Errors
    /// [`SecretError::Open`] when it is damaged, sealed under another key or for another owner.
    pub fn open(&self, owner: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SecretError> {
        let (nonce, ciphertext) = sealed.split_at_checked(NONCE_LEN).ok_or(SecretError::Open)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Open)?;
        let mut buf = ciphertext.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(owner), &mut buf)
            .map_err(|_| SecretError::Open)?;
        Ok(plain.to_vec())
    }
}

/// A new group key: [`KEY_LEN`] bytes from the operating system's random number generator.
///
/// # Errors
/// [`SecretError::Seal`] when the generator fails.
pub fn generate_group_key() -> Result<[u8; KEY_LEN], SecretError> {
    let mut key = [0u8; KEY_LEN];
    OsRng.try_fill_bytes(&mut key).map_err(|_| SecretError::Seal("no random key"))?;
    Ok(key)
}

/// A device's key: HMAC-SHA256 of its id (UTF-8) under the group key.
pub fn derive_device_key(group_key: &[u8], device_id: &str) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, group_key), device_id.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// The message a device signs to register: `"<registration_id>\n<expires_at>"` (Unix seconds).
fn proof_message(registration_id: &str, expires_at: i64) -> String {
    format!("{registration_id}\n{expires_at}")
}

/// The signature a device with `device_key` sends to register as `registration_id` until
/// `expires_at` (Unix seconds): HMAC-SHA256 of [`proof_message`].
pub fn proof_signature(device_key: &[u8], registration_id: &str, expires_at: i64) -> [u8; 32] {
    let message = proof_message(registration_id, expires_at);
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, device_key), message.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Whether `signature` is the proof signature of `registration_id` and `expires_at` under
/// `device_key`, compared in constant time.
pub fn verify_proof_signature(
    device_key: &[u8],
    registration_id: &str,
    expires_at: i64,
    signature: &[u8],
) -> bool {
    let message = proof_message(registration_id, expires_at);
    hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, device_key), message.as_bytes(), signature)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_open() {
        let b = SecretBox::new(&[7; 32]).unwrap();
        let sealed = b.seal(b"group-a", b"secret").unwrap();
        assert_eq!(sealed.len(), NONCE_LEN + 6 + 16);
        assert_eq!(b.open(b"group-a", &sealed).unwrap(), b"secret");
        assert_ne!(b.seal(b"group-a", b"secret").unwrap(), sealed, "fresh nonce each time");
        assert_eq!(b.open(b"group-b", &sealed), Err(SecretError::Open));
        let other = SecretBox::new(&[8; 32]).unwrap();
        assert_eq!(other.open(b"group-a", &sealed), Err(SecretError::Open));
        let mut damaged = sealed.clone();
        damaged[NONCE_LEN] ^= 1;
        assert_eq!(b.open(b"group-a", &damaged), Err(SecretError::Open));
        assert_eq!(b.open(b"group-a", &sealed[..5]), Err(SecretError::Open));
        assert!(matches!(SecretBox::new(&[0; 16]), Err(SecretError::KeyLength(16))));
    }

    /// RFC 4231 test case 2, so the HMAC is the standard one a factory script can reproduce.
    #[test]
    fn hmac_is_rfc_4231() {
        let key = derive_device_key(b"Jefe", "what do ya want for nothing?");
        assert_eq!(
            hex::encode(key),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn proofs() {
        let key = derive_device_key(&[1; 32], "sensor-1");
        let sig = proof_signature(&key, "sensor-1", 1_800_000_000);
        assert!(verify_proof_signature(&key, "sensor-1", 1_800_000_000, &sig));
        assert!(!verify_proof_signature(&key, "sensor-1", 1_800_000_001, &sig));
        assert!(!verify_proof_signature(&key, "sensor-2", 1_800_000_000, &sig));
        assert!(!verify_proof_signature(&key, "sensor-1", 1_800_000_000, &sig[..31]));
    }
}
