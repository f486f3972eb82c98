//! /metrics as Prometheus reads it: the whole output of a forwarding daemon passes `promtool check metrics`
//! (HELP and TYPE before samples, names and labels well formed) and keeps every family's lines together, as
//! the exposition format requires (promtool's parser lets a split family through, so that is checked here).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::netns::Bed;

const VXLAN: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#;

const WIREGUARD: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard"}}"#;

#[test]
fn metrics_pass_promtool_and_keep_families_together() {
    let (bed, _, _) = Bed::pinging_pair(VXLAN);
    let (code, text) = bed.weft(0).get("/metrics").expect("/metrics answers");
    assert_eq!(code, 200);
    assert!(text.contains("weft_drops_total{"), "{text}");
    assert!(!text.contains("weft_wireguard"), "{text}");
    promtool(&text);
}

#[test]
fn wireguard_metrics_pass_promtool_too() {
    let (bed, _, _) = Bed::pinging_pair(WIREGUARD);
    let (code, text) = bed.weft(0).get("/metrics").expect("/metrics answers");
    assert_eq!(code, 200);
    for family in [
        "weft_wireguard_handshakes_total ",
        "weft_wireguard_decrypt_failures_total{reason=\"replayed\"} ",
        "weft_wireguard_peer_handshakes_total{peer=",
        "weft_wireguard_peer_bytes_total{peer=",
        "weft_wireguard_peer_last_handshake_seconds{peer=",
    ] {
        assert!(text.contains(family), "{family} in\n{text}");
    }
    promtool(&text);
}

/// `promtool check metrics` accepts `text` without a word, and its families stand together.
fn promtool(text: &str) {
    assert_families_contiguous(text);
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "run promtool (Debian's prometheus package; the README's test command installs it)",
        );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every metric family's lines (HELP, TYPE, samples) stand together: once another family has begun, a
/// family never appears again.
fn assert_families_contiguous(text: &str) {
    let mut done: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let name = match line.strip_prefix("# ") {
            Some(rest) => rest.split_whitespace().nth(1).unwrap_or(""),
            None => line.split(['{', ' ']).next().unwrap_or(""),
        }
        .to_string();
        if name != current {
            assert!(
                !done.contains(&name),
                "family {name} is split: it appears again after other families:\n{text}"
            );
            if !current.is_empty() {
                done.push(std::mem::replace(&mut current, name));
            } else {
                current = name;
            }
        }
    }
}
