#!/usr/bin/env bash
# The Debian package test: builds weft's .deb from the committed HEAD in a fresh Debian 12 chroot, installs it there
# with apt, and checks the binary, the installed files and the units (systemd-analyze verify, with docker.io).
#   usage: netns-fixtures/package-test.sh
#     With ../shared/tools/fresh-machine.sh (this workplace): the whole test in a throwaway fresh chroot.
#     Without it: builds the package on this machine and checks its contents only (nothing is installed).
#   netns-fixtures/package-test.sh --on-throwaway-machine: the test itself, run in the chroot; it installs packages
#   (weft, systemd, docker.io) and writes under /etc and /run, so it belongs on a machine that is thrown away after.
set -euo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
say() { echo "package-test: $*"; }
fail() { echo "package-test: FAIL: $*" >&2; exit 1; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
[ -n "$VERSION" ] || fail "no version in Cargo.toml"

# What the .deb must hold, before anything is installed: files, modes, conffiles, dependencies.
check_contents() { # DEB
  local deb=$1 listing
  listing=$(dpkg-deb -c "$deb")
  echo "$listing" | awk '{ print "  " $1, $6 }'
  expect_entry() { # MODE PATH
    echo "$listing" | awk -v m="$1" -v p="./$2" '$1 == m && $6 == p { f = 1 } END { exit !f }' \
      || fail "the package has no $2 with mode $1"
  }
  expect_entry -rwxr-xr-x usr/bin/weft
  expect_entry -rw-r--r-- lib/systemd/system/weft.service
  expect_entry -rw-r--r-- usr/share/weft/docker.service.d/weft.conf
  expect_entry -rw------- etc/default/weft
  dpkg-deb -e "$deb" "$TMP/control"
  grep -qx /etc/default/weft "$TMP/control/conffiles" || fail "/etc/default/weft is not a conffile"
  for s in preinst postinst prerm postrm; do
    [ ! -e "$TMP/control/$s" ] || fail "unexpected maintainer script $s (the package enables and starts nothing)"
  done
  local depends
  depends=$(dpkg-deb -f "$deb" Depends)
  say "Depends: $depends"
  case ", $depends," in *", iptables,"*) ;; *) fail "Depends lacks iptables" ;; esac
  case "$depends" in libc6*|*" libc6"*) ;; *) fail "Depends lacks libc6 (cargo-deb's \$auto)" ;; esac
  [ "$(dpkg-deb -f "$deb" Version)" = "$VERSION-1" ] || fail "package version $(dpkg-deb -f "$deb" Version), want $VERSION-1"
}

if [ "${1:-}" != --on-throwaway-machine ]; then
  [ $# = 0 ] || { sed -n '4,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
  FRESH=../shared/tools/fresh-machine.sh
  if [ -x "$FRESH" ]; then
    # The chroot runs this machine's ~/.cargo/bin (rustup's tools) read-only, and crates.io's TLS cannot be verified
    # from it on this machine, so cargo-deb is installed here, where the chroot finds it on PATH.
    netns-fixtures/build-deb.sh --cargo-deb-only
    exec "$FRESH" --timeout "${PACKAGE_TEST_TIMEOUT:-1200}" . 'netns-fixtures/package-test.sh --on-throwaway-machine'
  fi
  say "$FRESH not found: building the package here and checking its contents (installing it needs a throwaway machine)"
  deb=$(netns-fixtures/build-deb.sh)
  check_contents "$deb"
  say "PASS: $deb built and its contents checked ($(( $(date +%s) - START ))s)"
  exit 0
fi

# ---- On the throwaway machine (a fresh Debian 12 chroot: no init, services are never started).
[ "$(id -u)" = 0 ] || fail "run as root"
export DEBIAN_FRONTEND=noninteractive

say "building the package from this checkout (netns-fixtures/build-deb.sh)"
deb=$(netns-fixtures/build-deb.sh)
[ -f "$deb" ] || fail "build-deb.sh printed '$deb', not a file"
say "built $deb ($(du -h "$deb" | cut -f1)) after $(( $(date +%s) - START ))s"
check_contents "$deb"

say "installing it with apt (which brings its Depends)"
apt-get update -qq
apt-get install -y -qq --no-install-recommends "$(realpath "$deb")" >"$TMP/apt.log" 2>&1 </dev/null \
  || { cat "$TMP/apt.log"; fail "apt-get install of the package failed"; }
[ "$(dpkg-query -W -f '${Status}' weft)" = "install ok installed" ] || fail "dpkg does not list weft as installed"

got=$(weft --version)
[ "$got" = "weft $VERSION" ] || fail "weft --version printed '$got', want 'weft $VERSION'"
say "weft --version: $got"
[ "$(command -v weft)" = /usr/bin/weft ] || fail "weft is not /usr/bin/weft on PATH"

# The installed files are dist/'s, byte for byte (the README shows the same files).
for pair in dist/weft.service:/lib/systemd/system/weft.service \
            dist/docker.service.d/weft.conf:/usr/share/weft/docker.service.d/weft.conf \
            dist/default/weft:/etc/default/weft; do
  cmp "${pair%%:*}" "${pair#*:}" || fail "${pair#*:} differs from ${pair%%:*}"
done
[ "$(stat -c %a /etc/default/weft)" = 600 ] || fail "/etc/default/weft is not mode 600"

# Every setting /etc/default/weft names (set or commented out) is one `weft run` reads from the environment.
weft run --help >"$TMP/help"
names=$(sed -n 's/^#\{0,1\}\([A-Z][A-Z0-9_]*\)=.*/\1/p' /etc/default/weft)
[ -n "$names" ] || fail "no settings found in /etc/default/weft"
for n in $names; do
  [ "$n" = WEFT_LOG ] && continue    # the log filter, read by main rather than by a flag
  grep -qE "\[env: $n[]=]" "$TMP/help" || fail "/etc/default/weft names $n, which no 'weft run' flag reads"
done
say "/etc/default/weft: $(echo "$names" | wc -l) settings, each read by weft run"

# procps: docker.io's own docker.service reloads with /bin/kill, which minbase lacks and docker.io does not depend on.
say "installing systemd (for systemd-analyze), docker.io (for the drop-in's unit) and procps (its /bin/kill)"
apt-get install -y -qq --no-install-recommends systemd docker.io procps >"$TMP/apt.log" 2>&1 </dev/null \
  || { cat "$TMP/apt.log"; fail "apt-get install systemd docker.io procps failed"; }

# systemd-analyze verify: unknown directives, bad values, missing executables, bad dependencies. It prints
# problems of the unit and of the units it pulls in; any line at all is a failure here.
verify() { # UNIT
  local out rc=0
  out=$(systemd-analyze verify "$1" 2>&1) || rc=$?
  if [ "$rc" != 0 ] || [ -n "$out" ]; then
    echo "$out"
    fail "systemd-analyze verify $1 exited $rc"
  fi
  say "systemd-analyze verify $1: clean"
}
verify weft.service

# The drop-in, turned on as the README says, on Debian's docker.service.
install -D -m 0644 /usr/share/weft/docker.service.d/weft.conf /etc/systemd/system/docker.service.d/weft.conf
systemd-delta --no-pager --type=extended | grep -F docker.service.d/weft.conf \
  || fail "systemd does not see the drop-in for docker.service"
verify docker.service
# Our ExecStart= is Debian's, plus weft's options (a bare dockerd: docker.io's /usr/sbin or docker-ce's /usr/bin).
debian=$(sed -n 's|^ExecStart=/usr/sbin/dockerd ||p' /lib/systemd/system/docker.service)
ours=$(sed -n 's|^ExecStart=dockerd ||p' /etc/systemd/system/docker.service.d/weft.conf)
[ -n "$debian" ] || fail "Debian's docker.service has no 'ExecStart=/usr/sbin/dockerd ...' line"
[ "$ours" = "$debian \$DOCKER_NETWORK_OPTIONS" ] \
  || fail "the drop-in's dockerd arguments '$ours' are not Debian's '$debian' plus \$DOCKER_NETWORK_OPTIONS"

# The drop-in's ExecStartPre= as systemd would run it, on a subnet.env as weft writes it.
pre=$(sed -n 's/^ExecStartPre=//p' /etc/systemd/system/docker.service.d/weft.conf)
mkdir -p /run/flannel
printf 'FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n' \
  >/run/flannel/subnet.env
$pre || fail "the drop-in's ExecStartPre failed: $pre"
want='DOCKER_NETWORK_OPTIONS="--bip=10.5.72.1/24 --ip-masq=false --mtu=1450"'
[ "$(cat /run/flannel/docker_opts.env)" = "$want" ] \
  || fail "docker_opts.env is '$(cat /run/flannel/docker_opts.env)', want '$want'"
say "the drop-in's ExecStartPre wrote: $want"

say "PASS: weft $VERSION packaged, installed on a fresh Debian 12, units verified ($(( $(date +%s) - START ))s)"
