//! The master key that seals enrollment secrets at rest (the REST API's `SecretBox`).
//!
//! Herd creates it on first start: 32 random bytes in `<data dir>/identity/master.key` (or
//! `identity.master_key_file`), mode 0600 in a 0700 directory, written atomically. On every later
//! start it is read back; Herd refuses to start when the file may be read by other users or is
//! not exactly 32 bytes, rather than run with a key others could have copied or a truncated one.

use std::path::Path;

use http_api::secrets::{KEY_LEN, SecretBox};
use rand::TryRngCore as _;
use rand::rngs::OsRng;

use crate::identity::ca::{CaError, check_private, create_private_dir, exists, write_atomically};

/// Loads the master key from `path`, creating it (and its directory) when it does not exist.
///
/// Blocking file I/O: call it from `spawn_blocking`.
///
/// # Errors
/// [`CaError`] naming the file: unreadable or unwritable, readable by other users, or not
/// [`KEY_LEN`] bytes.
pub fn load_or_create_master_key(path: &Path) -> Result<SecretBox, CaError> {
    if !exists(path)? {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !exists(dir)?
        {
            create_private_dir(dir)?;
        }
        let mut key = [0u8; KEY_LEN];
        OsRng.try_fill_bytes(&mut key).map_err(|e| CaError::Write {
            path: path.to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?;
        write_atomically(path, &key, 0o600)?;
        tracing::info!(path = %path.display(), "created the master key for enrollment secrets");
    }
    check_private(path)?;
    let key =
        std::fs::read(path).map_err(|source| CaError::Read { path: path.to_owned(), source })?;
    SecretBox::new(&key).map_err(|_| CaError::InvalidFile {
        path: path.to_owned(),
        reason: format!("a master key is {KEY_LEN} bytes, this file has {}", key.len()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity").join("master.key");
        let first = load_or_create_master_key(&path).unwrap();
        let sealed = first.seal(b"g", b"secret").unwrap();
        let again = load_or_create_master_key(&path).unwrap();
        assert_eq!(again.open(b"g", &sealed).unwrap(), b"secret");
        assert_eq!(std::fs::read(&path).unwrap().len(), KEY_LEN);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn refuses_a_wrong_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        write_atomically(&path, &[1; 16], 0o600).unwrap();
        let err = load_or_create_master_key(&path).unwrap_err();
        assert!(err.to_string().contains("32 bytes"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn refuses_a_key_others_can_read() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        write_atomically(&path, &[1; 32], 0o600).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create_master_key(&path).unwrap_err();
        assert!(matches!(err, CaError::KeyNotPrivate { .. }), "{err}");
    }
}
