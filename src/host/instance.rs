//! One weft per network namespace and per subnet file: exclusive `flock`s under /run/weft, held for the
//! daemon's life and released by the kernel when it exits (even on SIGKILL), so a stale file never blocks.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Where the lock files live.
pub const LOCK_DIR: &str = "/run/weft";

/// Why this weft may not run.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("another weft is already running {scope} ({holder}); stop it first, or give this one its own network namespace and --subnet-file")]
    Running { scope: String, holder: String },
    #[error("cannot use the lock file {path}: {source}; is /run writable (weft runs as root)?")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The locks of the running daemon; dropping it releases them.
pub struct InstanceLock {
    _locks: Vec<Flock<File>>,
}

/// Takes the subnet file's lock, and the network namespace's when this weft forwards packets (it then owns
/// the namespace's tun device, UDP port, routes and kernel VXLAN device). `about` is written into the lock
/// files so that a second weft can name this one.
pub fn acquire(
    subnet_file: &Path,
    forwards: bool,
    about: &str,
) -> Result<InstanceLock, InstanceError> {
    let dir = Path::new(LOCK_DIR);
    std::fs::create_dir_all(dir).map_err(|source| InstanceError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let abs = std::path::absolute(subnet_file).unwrap_or_else(|_| subnet_file.to_path_buf());
    let mut wanted = vec![(
        dir.join(format!(
            "subnet-{:016x}.lock",
            fnv1a(abs.as_os_str().as_encoded_bytes())
        )),
        format!("with subnet file {}", abs.display()),
    )];
    if forwards {
        let ns = std::fs::metadata("/proc/self/ns/net").map_err(|source| InstanceError::Io {
            path: "/proc/self/ns/net".into(),
            source,
        })?;
        wanted.push((
            dir.join(format!("netns-{}-{}.lock", ns.dev(), ns.ino())),
            "in this network namespace".to_string(),
        ));
    }
    let mut locks = Vec::with_capacity(wanted.len());
    for (path, scope) in wanted {
        locks.push(lock_one(&path, &scope, about)?);
    }
    Ok(InstanceLock { _locks: locks })
}

fn lock_one(path: &Path, scope: &str, about: &str) -> Result<Flock<File>, InstanceError> {
    let io = |source| InstanceError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut f) => {
            f.set_len(0).map_err(io)?;
            f.rewind().map_err(io)?;
            f.write_all(about.as_bytes()).map_err(io)?;
            Ok(f)
        }
        Err((mut f, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut holder = String::new();
            let _ = f.read_to_string(&mut holder);
            Err(InstanceError::Running {
                scope: scope.to_string(),
                holder: match holder.trim() {
                    "" => "it has not said who it is yet".to_string(),
                    h => h.to_string(),
                },
            })
        }
        Err((_, e)) => Err(io(e.into())),
    }
}

/// FNV-1a, to name a lock file after a path of any length (not for security: only this host's paths).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_names_differ() {
        assert_ne!(
            fnv1a(b"/run/flannel/subnet.env"),
            fnv1a(b"/run/flannel/subnet2.env")
        );
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    }
}
