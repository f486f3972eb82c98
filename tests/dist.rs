//! The files in `dist/` as operators get them: shown verbatim in the README, naming only settings and flags the
//! built `weft` has. (netns-fixtures/package-test.sh installs them from the Debian package and verifies the units.)

use std::path::Path;
use std::process::Command;

const DIST: [&str; 3] = [
    "dist/weft.service",
    "dist/docker.service.d/weft.conf",
    "dist/default/weft",
];

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()))
}

fn weft(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .output()
        .expect("run weft");
    assert!(out.status.success(), "weft {args:?}: {out:?}");
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The contents of the README's fenced code blocks.
fn fenced_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with("```") {
            match current.take() {
                Some(block) => blocks.push(block),
                None => current = Some(String::new()),
            }
        } else if let Some(block) = current.as_mut() {
            block.push_str(line);
            block.push('\n');
        }
    }
    blocks
}

#[test]
fn the_readme_shows_each_dist_file_verbatim() {
    let blocks = fenced_blocks(&read("README.md"));
    for path in DIST {
        let text = read(path);
        assert!(
            blocks.contains(&text),
            "README.md has no code block equal to {path}; copy the file into the README as it is"
        );
        assert!(
            text.starts_with("# "),
            "{path} starts with a comment line saying what it is"
        );
    }
}

#[test]
fn the_units_run_the_commands_weft_has() {
    let unit = read("dist/weft.service");
    assert!(unit.contains("\nExecStart=/usr/bin/weft run\n"), "{unit}");
    assert!(
        unit.contains("\nType=notify\n"),
        "weft sends READY=1: {unit}"
    );
    let help = weft(&["docker-opts", "--help"]);
    let dropin = read("dist/docker.service.d/weft.conf");
    let pre = dropin
        .lines()
        .find_map(|l| l.strip_prefix("ExecStartPre=/usr/bin/weft docker-opts "))
        .expect("the drop-in runs weft docker-opts");
    for word in pre.split_whitespace().filter(|w| w.starts_with("--")) {
        assert!(
            help.contains(word),
            "weft docker-opts has no {word}:\n{help}"
        );
    }
}

#[test]
fn every_setting_in_the_default_file_is_read_by_weft_run() {
    let help = weft(&["run", "--help"]);
    let names: Vec<String> = read("dist/default/weft")
        .lines()
        .map(|l| l.trim_start_matches('#'))
        .filter_map(|l| l.split_once('=').map(|(name, _)| name.to_string()))
        .filter(|n| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .collect();
    assert!(
        names.iter().any(|n| n == "WEFT_ETCD_ENDPOINTS"),
        "{names:?}"
    );
    for name in names.iter().filter(|n| *n != "WEFT_LOG") {
        assert!(
            help.contains(&format!("[env: {name}=")) || help.contains(&format!("[env: {name}]")),
            "dist/default/weft names {name}, which no `weft run` flag reads"
        );
    }
}

#[test]
fn version_names_the_package_version() {
    assert_eq!(
        weft(&["--version"]).trim_end(),
        format!("weft {}", env!("CARGO_PKG_VERSION"))
    );
}
