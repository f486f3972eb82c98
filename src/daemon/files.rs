//! The files `weft run` reads and writes on this host: subnet.env (read at start, written atomically) and the
//! systemd readiness notification.

use std::path::Path;

use crate::control::lease::SubnetKey;
use tracing::warn;

use crate::control::subnet_env::SubnetEnv;

pub(super) fn read_previous_subnet(path: &Path) -> Option<SubnetKey> {
    let text = std::fs::read_to_string(path).ok()?;
    match SubnetEnv::parse(&text) {
        Ok(env) => Some(SubnetKey {
            v4: env.ipv4.map(|(_, subnet)| subnet),
            v6: env.ipv6.map(|(_, subnet6)| subnet6),
        }),
        Err(e) => {
            warn!(file = %path.display(), "ignoring previous subnet file: {e}");
            None
        }
    }
}

/// Writes `text` to `path` through a temporary file and a rename, so readers never see half a file.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&tmp, path)
}

/// Tells systemd (Type=notify) that subnet.env is written, as flanneld does.
pub(super) fn notify_systemd_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    if let Err(e) = sock.send_to(b"READY=1", &path) {
        warn!("cannot notify systemd: {e}");
    }
}
