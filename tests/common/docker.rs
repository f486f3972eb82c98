//! A real dockerd inside a host's network namespace (own data-root, exec-root and socket), with a
//! busybox image built locally by `docker import`; everything removed on drop.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::wait_for;

pub struct Dockerd {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Dockerd {
    /// Starts dockerd in namespace `ns` with `opts` (e.g. from `weft docker-opts`).
    pub fn start(ns: &str, opts: &[String]) -> Dockerd {
        let dir = tempfile::Builder::new()
            .prefix("weft-docker-")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        let log = std::fs::File::create(d.join("dockerd.log")).expect("log");
        // nsenter keeps the mount namespace (cgroups), unlike `ip netns exec`.
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{ns}"))
            .arg("dockerd")
            .args(opts)
            .arg(format!("--data-root={}", d.join("root").display()))
            .arg(format!("--exec-root={}", d.join("exec").display()))
            .arg(format!("--host=unix://{}", d.join("docker.sock").display()))
            .arg(format!("--pidfile={}", d.join("docker.pid").display()))
            .arg("--storage-driver=vfs")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("start dockerd (Debian's docker.io; the README's test command installs it)");
        let dk = Dockerd {
            child: Some(child),
            dir,
        };
        wait_for("dockerd to answer", Duration::from_secs(60), || {
            dk.docker(&["info"]).status.success().then_some(())
        });
        dk.import_busybox();
        dk
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// Runs the docker client against this daemon.
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg(format!(
                "--host=unix://{}",
                self.dir.path().join("docker.sock").display()
            ))
            .args(args)
            .output()
            .expect("run docker")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Builds `weft-busybox:1` from Debian's static busybox with `docker import`.
    fn import_busybox(&self) {
        let root = self.dir.path().join("img");
        std::fs::create_dir_all(root.join("bin")).expect("img dir");
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect(
            "copy /bin/busybox (Debian's busybox-static; the README's test command installs it)",
        );
        for applet in ["sh", "ping", "sleep", "nc", "wget", "md5sum", "cat"] {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
        let tar = self.dir.path().join("busybox.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .expect("tar");
        assert!(st.success());
        self.ok(&[
            "import",
            tar.to_str().expect("utf-8 path"),
            "weft-busybox:1",
        ]);
    }

    /// Starts a container that sleeps; returns its name.
    pub fn run(&self, name: &str) -> String {
        self.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "weft-busybox:1",
            "sleep",
            "3600",
        ]);
        name.to_string()
    }

    pub fn ip_of(&self, name: &str) -> Ipv4Addr {
        self.ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", name])
            .parse()
            .expect("container IP")
    }

    /// The container's global IPv6 address (dockerd --ipv6 --fixed-cidr-v6).
    pub fn ip6_of(&self, name: &str) -> std::net::Ipv6Addr {
        self.ok(&[
            "inspect",
            "-f",
            "{{.NetworkSettings.GlobalIPv6Address}}",
            name,
        ])
        .parse()
        .expect("container IPv6 address")
    }

    /// One ping over IPv6 from container `name` to `ip`.
    pub fn ping6(&self, name: &str, ip: std::net::Ipv6Addr) -> bool {
        self.docker(&["exec", name, "ping", "-6", "-c1", "-W2", &ip.to_string()])
            .status
            .success()
    }

    /// The container's network namespace as a path for `in_netns`.
    pub fn netns_of(&self, name: &str) -> String {
        format!(
            "/proc/{}/ns/net",
            self.ok(&["inspect", "-f", "{{.State.Pid}}", name])
        )
    }

    /// One ping from container `name` to `ip`.
    pub fn ping(&self, name: &str, ip: Ipv4Addr) -> bool {
        self.docker(&["exec", name, "ping", "-c1", "-W2", &ip.to_string()])
            .status
            .success()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let ids = self.docker(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = self.docker(&["rm", "-f", id]);
        }
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // vfs layers may hold read-only files; make them writable before the TempDir removes them.
        let _ = Command::new("chmod")
            .arg("-R")
            .arg("u+w")
            .arg(self.dir.path())
            .status();
    }
}
