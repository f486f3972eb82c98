//! One weft per network namespace and per subnet file: a second one exits at once naming the first, and the
//! first keeps its subnet, its device and its routes.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::netns::{exec, Bed};
use common::{wait_for, Etcd, Weft};

const VXLAN: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#;

/// Runs a second `weft run` (in namespace `ns`, or here) and waits up to 10 s for it to exit by itself.
fn second_weft(ns: Option<&str>, args: &[String]) -> (Output, Duration) {
    let started = Instant::now();
    let mut cmd: Command = common::command_in(ns, env!("CARGO_BIN_EXE_weft"));
    let mut child = cmd
        .arg("run")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a second weft");
    let exited = wait_for(
        "the second weft to exit",
        Duration::from_secs(10),
        || match child.try_wait() {
            Ok(Some(_)) => Some(true),
            _ if started.elapsed() > Duration::from_secs(9) => Some(false),
            _ => None,
        },
    );
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("second weft's output");
    (out, started.elapsed())
}

#[test]
fn a_second_weft_on_the_same_subnet_file_exits_naming_the_first() {
    let etcd = Etcd::start();
    etcd.set_config(VXLAN);
    let a = Weft::start(&etcd, "127.22.0.1", &[]);
    let sa = a.wait_subnet();
    let mut args = etcd.weft_args();
    args.extend([
        "--iface=lo".to_string(),
        "--public-ip=127.22.0.2".into(),
        "--dataplane=none".into(),
        "--healthz-port=0".into(),
        format!("--subnet-file={}", a.subnet_file().display()),
    ]);
    let (out, took) = second_weft(None, &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second weft ran: {stderr}");
    assert!(
        took < Duration::from_secs(5),
        "refused at once, took {took:?}"
    );
    assert!(
        stderr.contains("another weft is already running")
            && stderr.contains(&format!("pid {}", a.pid())),
        "names the first: {stderr}"
    );
    // The first one is untouched, and its subnet.env still names its own subnet.
    assert_eq!(a.subnet().as_deref(), Some(sa.as_str()));
    let env = std::fs::read_to_string(a.subnet_file()).unwrap();
    assert!(env.contains(&sa.replace(".0/", ".1/")), "{env}");
}

#[test]
fn a_second_forwarding_weft_in_one_namespace_exits_and_leaves_the_first_alone() {
    let mut bed = Bed::new(1, VXLAN);
    bed.start_weft(0, &[]);
    let first = bed.weft(0);
    first.wait_subnet();
    let ns = bed.hosts[0].ns.name.clone();
    let route = || {
        String::from_utf8_lossy(&exec(&ns, "ip", &["route", "show", "10.5.0.0/16"]).stdout)
            .into_owned()
    };
    assert!(route().contains("weft0"), "{}", route());
    let dir = tempfile::tempdir().unwrap();
    let mut args = bed.etcd.weft_args();
    args.extend([
        "--tun-name=weft1".to_string(),
        "--healthz-port=0".into(),
        format!("--subnet-file={}", dir.path().join("subnet.env").display()),
    ]);
    let (out, took) = second_weft(Some(&ns), &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second weft ran: {stderr}");
    assert!(
        took < Duration::from_secs(5),
        "refused at once, took {took:?}"
    );
    eprintln!("second weft in the namespace refused after {took:?}");
    assert!(
        stderr.contains("already running in this network namespace")
            && stderr.contains(&format!("pid {}", first.pid())),
        "names the first: {stderr}"
    );
    // The first keeps its route and device; no second device appeared.
    assert!(route().contains("weft0"), "route gone: {}", route());
    let links = String::from_utf8_lossy(&exec(&ns, "ip", &["-o", "link"]).stdout).into_owned();
    assert!(!links.contains("weft1"), "{links}");
    assert_eq!(first.get("/readyz").map(|r| r.0), Some(200));
}
