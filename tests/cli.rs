//! The command line as an operator meets it: invalid flags refused with one line and exit status 2 before
//! anything is touched, and output into a closed pipe ending quietly.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::{exec, unique_id, Netns};
use common::Etcd;

/// Runs `weft run` with `flags` inside a fresh namespace; returns (exit code, stderr, how long it took, the
/// namespace's links afterwards).
fn run_refused(flags: &[&str]) -> (Option<i32>, String, Duration, String) {
    let ns = Netns::new(format!("{}-cli", unique_id()));
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join("subnet.env");
    let started = Instant::now();
    let out = common::command_in(Some(&ns.name), env!("CARGO_BIN_EXE_weft"))
        .arg("run")
        .args(flags)
        .args([
            "--public-ip=127.0.0.1",
            "--iface=lo",
            "--healthz-port=0",
            &format!("--subnet-file={}", env.display()),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run weft");
    let took = started.elapsed();
    let links = String::from_utf8_lossy(&exec(&ns.name, "ip", &["-o", "link"]).stdout).into_owned();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        took,
        links,
    )
}

#[test]
fn invalid_flags_are_one_line_and_exit_status_2() {
    let junk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(junk.path(), "this is not a certificate\n").unwrap();
    let junk = junk.path().to_str().unwrap().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--workers=0".into()], "--workers 0"),
        (vec!["--workers=100000".into()], "--workers 100000"),
        (vec!["--tun-name=weft-tunnel-number-1".into()], "--tun-name"),
        (vec!["--tun-name=a/b".into()], "--tun-name"),
        (
            vec!["--etcd-endpoints=not-a-url".into()],
            "--etcd-endpoints",
        ),
        (
            vec!["--etcd-endpoints=ftp://127.0.0.1:2379".into()],
            "--etcd-endpoints",
        ),
        (vec![format!("--etcd-cafile={junk}")], "--etcd-cafile"),
    ];
    for (flags, names) in cases {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let (code, stderr, took, links) = run_refused(&flags);
        assert_eq!(code, Some(2), "{flags:?}: exit status, stderr: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{flags:?}: one line, got: {stderr}");
        assert!(
            lines[0].contains(names),
            "{flags:?}: names the flag: {stderr}"
        );
        assert!(
            took < Duration::from_secs(5),
            "{flags:?}: refused at once, took {took:?}"
        );
        // Nothing was created: no tun device, no kernel VXLAN fallback device.
        assert!(
            !links.contains("weft") && !links.contains("flannel"),
            "{flags:?}: devices left behind: {links}"
        );
    }
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let etcd = Etcd::start();
    etcd.set_config(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#);
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .arg("leases")
        .args(etcd.weft_args())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run weft leases");
    // The reader goes away before weft writes its first line (as `| head -0` would).
    drop(child.stdout.take());
    let status = child.wait().expect("wait for weft");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!stderr.contains("panicked"), "weft panicked: {stderr}");
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
}
