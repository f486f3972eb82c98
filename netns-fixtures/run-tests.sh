#!/usr/bin/env bash
# Runs all of weft's tests: formatting, lints, unit tests and the integration tests (real etcd, netns).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "run-tests: run as root (the tests create network namespaces)" >&2; exit 1; fi
bash netns-fixtures/deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo build --benches
cargo test --all-targets
