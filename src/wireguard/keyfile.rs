//! This host's WireGuard private key file, as flannel keeps it: base64 in `/run/flannel/wgkey` (or
//! `WIREGUARD_KEY_FILE`), generated on first start and reused after, so the public key in the lease stays.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;

use crate::control::key::{decode_key, encode_key};

/// flannel's default key file.
pub const DEFAULT_KEY_FILE: &str = "/run/flannel/wgkey";

/// Why the key file could not be used; each names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read the WireGuard key file {path}: {source}; fix its permissions or point --wireguard-key-file (WIREGUARD_KEY_FILE) elsewhere")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the WireGuard key file {path} does not hold a key ({why}); it must hold a private key in base64 as `wg genkey` prints it — remove the file to have weft generate a new one (peers then see a new public key)")]
    Malformed { path: PathBuf, why: String },
    #[error("cannot create the WireGuard key file {path}: {source}; is its directory writable, or point --wireguard-key-file (WIREGUARD_KEY_FILE) elsewhere")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The private key in `path`, or a new one written there (mode 0600, directory created) when the file
/// does not exist. Returns the key and whether it was generated now.
pub fn load_or_create(path: &Path) -> Result<([u8; 32], bool), KeyFileError> {
    match std::fs::read_to_string(path) {
        Ok(text) => decode_key(&text)
            .map(|k| (k, false))
            .map_err(|why| KeyFileError::Malformed {
                path: path.to_path_buf(),
                why,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path).map(|k| (k, true)),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(KeyFileError::Malformed {
            path: path.to_path_buf(),
            why: "it is not text".into(),
        }),
        Err(source) => Err(KeyFileError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A new private key: 32 random bytes from the OS, clamped as Curve25519 private keys are (as
/// `wg genkey` does).
pub fn generate() -> [u8; 32] {
    let mut k = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut k);
    k[0] &= 248;
    k[31] = (k[31] & 127) | 64;
    k
}

fn create(path: &Path) -> Result<[u8; 32], KeyFileError> {
    let err = |source| KeyFileError::Create {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let key = generate();
    // Written beside and renamed into place, so a crash never leaves a half-written key.
    let tmp = path.with_extension("weft-tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(err)?;
    f.write_all(encode_key(&key).as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_created_once_with_mode_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/wgkey");
        let (k1, new1) = load_or_create(&path).unwrap();
        assert!(new1);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (k2, new2) = load_or_create(&path).unwrap();
        assert!(!new2);
        assert_eq!(k1, k2);
        assert_eq!(k1[0] & 7, 0);
        assert_eq!(k1[31] & 0xc0, 0x40);
    }

    #[test]
    fn a_malformed_key_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wgkey");
        std::fs::write(&path, "hello").unwrap();
        let e = load_or_create(&path).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("does not hold a key"), "{e}");
        // flannel's file (wg genkey output with a newline) is accepted.
        std::fs::write(&path, format!("{}\n", encode_key(&[9; 32]))).unwrap();
        assert_eq!(load_or_create(&path).unwrap(), ([9; 32], false));
    }
}
