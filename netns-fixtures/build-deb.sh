#!/usr/bin/env bash
# Builds weft's Debian package (target/debian/weft_<version>-1_<arch>.deb) with cargo-deb on a Debian machine (root):
# installs the build's Debian packages and cargo-deb if missing, then prints the package's path (the only line on stdout;
# progress goes to stderr). With --cargo-deb-only it only makes sure cargo-deb is there.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_DEB_VERSION=3.8.0   # the cargo-deb installed when none is on PATH (pinned: the package's layout is tested with it)
ONLY_CARGO_DEB=0
[ "${1:-}" = --cargo-deb-only ] && ONLY_CARGO_DEB=1

# gcc + libc6-dev: rustup brings no linker; protobuf-compiler + libprotobuf-dev: etcd-client's build;
# dpkg-dev: dpkg-shlibdeps, which cargo-deb asks for the binary's shared-library dependencies ($auto).
packages=(gcc libc6-dev protobuf-compiler libprotobuf-dev dpkg-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ] && [ "$ONLY_CARGO_DEB" = 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "build-deb: missing ${missing[*]}; install them (or run as root)" >&2; exit 1; }
  echo "build-deb: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 </dev/null
fi
command -v cargo >/dev/null || { echo "build-deb: cargo not found; install the Rust toolchain (rustup) first" >&2; exit 1; }

# cargo-deb: the one on PATH, else `cargo install` it (into ~/.cargo/bin, or under target/ where that is read-only).
if ! cargo deb --version >/dev/null 2>&1; then
  root=${CARGO_HOME:-$HOME/.cargo}
  if ! { mkdir -p "$root/bin" && [ -w "$root/bin" ]; } 2>/dev/null; then
    root=$PWD/target/tools
    export PATH=$root/bin:$PATH
  fi
  if ! cargo deb --version >/dev/null 2>&1; then
    echo "build-deb: installing cargo-deb $CARGO_DEB_VERSION (crates.io) into $root/bin" >&2
    cargo install --quiet --locked --version "$CARGO_DEB_VERSION" --root "$root" cargo-deb
  fi
fi
echo "build-deb: $(cargo deb --version)" >&2
if [ "$ONLY_CARGO_DEB" = 1 ]; then exit 0; fi
cargo deb
