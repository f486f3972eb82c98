#!/usr/bin/env bash
# Installs what weft's build, tests and demo need on a Debian machine, idempotently (root).
set -euo pipefail

# gcc + libc6-dev: rustup brings no C compiler or linker (and gcc only recommends libc6-dev); libprotobuf-dev:
# protobuf-compiler only recommends it, and etcd-client's build needs its descriptor.proto.
# prometheus: its promtool checks /metrics against the exposition format in the tests.
# wireguard-go + wireguard-tools: the tests' and bench's stand-in for a flannel wireguard host (this kernel has no WireGuard
# module); tcpdump: the tests capture the underlay to check that it carries ciphertext only.
packages=(gcc libc6-dev etcd-server etcd-client protobuf-compiler libprotobuf-dev iproute2 iperf3 openssl procps iputils-ping curl iptables docker.io busybox-static tar util-linux prometheus wireguard-go wireguard-tools tcpdump)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "deps: cargo not found; install the Rust toolchain (rustup) first" >&2; exit 1; }
