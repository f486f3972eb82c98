# shellcheck shell=bash
# The netns test bed shared by demo.sh and bench.sh (sourced, not run): an underlay namespace with a bridge
# and etcd, hosts joined to it by veths, weft daemons on the hosts, "containers" behind a bridge on a host, and
# one cleanup that removes all of it on every exit path (normal exit, error, SIGINT, SIGTERM).
# (tests/common/netns.rs builds the same bed in Rust for the integration tests.)
#
#   bed_prepare NAME            root check and deps.sh; NAME prefixes messages ("demo", "bench")
#   bed_build_weft              cargo build --release; sets WEFT
#   bed_init NAME PREFIX        ID=PREFIX<pid> (namespaces are $ID-*), WORK=/tmp/weft-NAME-XXXXXX, traps
#   bed_on_cleanup FUNC         FUNC RC runs first in the cleanup (e.g. to remove docker containers)
#   bed_netns NAME              namespace $ID-NAME with lo up, deleted by the cleanup
#   bed_underlay                namespace $UL with bridge br0 holding $ETCD_IP/24
#   bed_host I                  namespace $ID-hI: eth0 10.250.0.I/24 and fd00:250::I/64 (nodad) on the underlay
#                               bridge, default via $ETCD_IP (IPv6: the /64 only; the hosts share the bridge)
#   bed_etcd                    etcd in $UL on $ETCD_IP:2379, waited for; sets EP (weft's --etcd-endpoints flag)
#   bed_up N                    bed_underlay, bed_host 1..N, bed_etcd
#   bed_spawn LOG CMD...        CMD in the background, output to LOG; sets BED_PID; the cleanup kills it
#   bed_kill PID...             kill (TERM) and wait for spawned processes, and forget them
#   bed_weft_run I FILE LOG ARGS...   weft run $EP --subnet-file FILE ARGS in host I; sets BED_PID
#   bed_weft_wait I FILE        wait until host I's weft answers `weft status` and has written FILE
#   bed_container I GW/LEN MTU  bridge cbr0 with GW/LEN in host I, namespace $ID-cI with GW+1 behind it; sets CIP
#   bed_container6 I SUBNET6    after bed_container: SUBNET6's ::1 on cbr0, its ::2 in the container with an
#                               IPv6 default route via ::1 (as dockerd --ipv6 --fixed-cidr-v6); sets CIP6
#   bed_container_del I         removes them
#   bed_env FILE KEY            the value of KEY in an env file such as subnet.env

BED_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ETCD_IP=10.250.0.254
BED_NAME=bed
BED_NS=()       # namespaces to delete
BED_PIDS=()     # processes to kill and wait for
BED_WEFT_LOGS=()  # "I LOG" per weft started, shown when the run fails
BED_HOOKS=()
BED_SIGNAL=""
BED_CLEANED=0

bed_prepare() {
  BED_NAME=$1
  [ "$(id -u)" = 0 ] || { echo "$BED_NAME: run as root (it creates network namespaces)" >&2; exit 1; }
  bash "$BED_ROOT/netns-fixtures/deps.sh"
}

bed_build_weft() {
  echo "== building weft (release)"
  (cd "$BED_ROOT" && cargo build --release --quiet)
  WEFT="$BED_ROOT/target/release/weft"
}

bed_init() {
  BED_NAME=$1
  ID="$2$$"
  UL="$ID-ul"
  WORK=$(mktemp -d "/tmp/weft-$1-XXXXXX")
  trap bed_cleanup EXIT
  trap 'BED_SIGNAL=INT; exit 130' INT
  trap 'BED_SIGNAL=TERM; exit 143' TERM
}

bed_on_cleanup() { BED_HOOKS+=("$1"); }

bed_netns() {
  [[ " ${BED_NS[*]} " == *" $ID-$1 "* ]] || BED_NS+=("$ID-$1")
  ip netns add "$ID-$1"
  ip -n "$ID-$1" link set lo up
}

bed_underlay() {
  bed_netns ul
  ip -n "$UL" link add br0 type bridge
  ip -n "$UL" addr add "$ETCD_IP/24" dev br0
  ip -n "$UL" link set br0 up
}

bed_host() {
  local i=$1 h="$ID-h$1"
  bed_netns "h$i"
  ip link add eth0 netns "$h" type veth peer name "p$i" netns "$UL"
  ip -n "$UL" link set "p$i" master br0 up
  ip -n "$h" addr add "10.250.0.$i/24" dev eth0
  ip -n "$h" addr add "fd00:250::$i/64" dev eth0 nodad
  ip -n "$h" link set eth0 up
  ip -n "$h" route add default via "$ETCD_IP"
}

bed_spawn() {
  local log=$1; shift
  "$@" >"$log" 2>&1 &
  BED_PID=$!
  BED_PIDS+=("$BED_PID")
}

bed_kill() {
  local p q keep
  for p in "$@"; do kill "$p" 2>/dev/null || true; done
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
  for p in "$@"; do
    keep=()
    for q in "${BED_PIDS[@]}"; do [ "$q" = "$p" ] || keep+=("$q"); done
    BED_PIDS=("${keep[@]}")
  done
}

bed_etcd() {
  bed_spawn "$WORK/etcd.log" nsenter --net="/var/run/netns/$UL" etcd --name "$BED_NAME" --data-dir "$WORK/etcd" \
    --listen-client-urls "http://$ETCD_IP:2379" --advertise-client-urls "http://$ETCD_IP:2379" \
    --listen-peer-urls "http://127.0.0.1:2380" --initial-advertise-peer-urls "http://127.0.0.1:2380" \
    --initial-cluster "$BED_NAME=http://127.0.0.1:2380"
  EP="--etcd-endpoints=http://$ETCD_IP:2379"
  local _
  for _ in $(seq 1 100); do
    ip netns exec "$UL" etcdctl --endpoints="http://$ETCD_IP:2379" endpoint health >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "$BED_NAME: etcd did not become healthy; $WORK/etcd.log:" >&2
  tail -5 "$WORK/etcd.log" >&2
  return 1
}

bed_up() {
  local i
  bed_underlay
  for i in $(seq 1 "$1"); do bed_host "$i"; done
  bed_etcd
}

bed_weft_run() {
  local i=$1 file=$2 log=$3; shift 3
  [[ " ${BED_WEFT_LOGS[*]} " == *" $i $log "* ]] || BED_WEFT_LOGS+=("$i $log")
  bed_spawn "$log" ip netns exec "$ID-h$i" "$WEFT" run "$EP" --subnet-file "$file" "$@"
}

bed_weft_wait() {
  local _
  for _ in $(seq 1 100); do
    [ -s "$2" ] && ip netns exec "$ID-h$1" "$WEFT" status >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "$BED_NAME: weft on host $1 wrote no subnet file within 10 s" >&2
  return 1
}

bed_env() { sed -n "s/^$2=//p" "$1"; }

bed_container() {
  local i=$1 sub=$2 mtu=$3 h="$ID-h$1" c="$ID-c$1"
  local len=${sub#*/} gw=${sub%/*}
  CIP="${gw%.*}.$(( ${gw##*.} + 1 ))"
  bed_netns "c$i"
  ip -n "$h" link add cbr0 type bridge; ip -n "$h" addr add "$sub" dev cbr0; ip -n "$h" link set cbr0 up
  ip link add eth0 netns "$c" mtu "$mtu" type veth peer name vc netns "$h" mtu "$mtu"
  ip -n "$h" link set vc master cbr0 up
  ip -n "$c" addr add "$CIP/$len" dev eth0; ip -n "$c" link set eth0 up; ip -n "$c" route add default via "$gw"
}

bed_container6() {
  local i=$1 h="$ID-h$1" c="$ID-c$1" len=${2#*/} gw
  # SUBNET6 may be the network (fc00:5:0:1::/64) or, as in subnet.env, its first address (fc00:5:0:1::1/64)
  read -r gw CIP6 < <(python3 -c 'import ipaddress, sys; n = ipaddress.ip_network(sys.argv[1], strict=False)
print(n[1], n[2])' "$2")
  ip -n "$h" addr add "$gw/$len" dev cbr0 nodad
  ip -n "$c" addr add "$CIP6/$len" dev eth0 nodad
  ip -n "$c" -6 route add default via "$gw"
}

bed_container_del() {
  ip netns del "$ID-c$1" 2>/dev/null || true
  ip -n "$ID-h$1" link del cbr0 2>/dev/null || true
}

# Kills whatever still runs in namespace $1 (daemonized iperf3s, dockerd's children): TERM, up to 5 s, then KILL.
bed_ns_reap() {
  local pids _
  pids=$(ip netns pids "$1" 2>/dev/null) || return 0
  [ -n "$pids" ] || return 0
  # shellcheck disable=SC2086
  kill $pids 2>/dev/null
  for _ in $(seq 1 50); do
    pids=$(ip netns pids "$1" 2>/dev/null)
    [ -n "$pids" ] || return 0
    sleep 0.1
  done
  # shellcheck disable=SC2086
  kill -9 $pids 2>/dev/null
  sleep 0.2
}

bed_cleanup() {
  local rc=$? h p n i log mnt
  set +e
  trap '' INT TERM
  [ "$BED_CLEANED" = 1 ] && return
  BED_CLEANED=1
  if [ -n "$BED_SIGNAL" ]; then
    echo "$BED_NAME: interrupted (SIG$BED_SIGNAL); cleaning up" >&2
  elif [ "$rc" != 0 ] && [ ${#BED_WEFT_LOGS[@]} -gt 0 ]; then
    echo "$BED_NAME: failed (exit $rc); the last lines of each weft log:" >&2
    for n in "${BED_WEFT_LOGS[@]}"; do
      i=${n%% *}; log=${n#* }
      [ -s "$log" ] && { echo "-- host $i" >&2; tail -5 "$log" >&2; }
    done
  fi
  for h in "${BED_HOOKS[@]}"; do "$h" "$rc"; done
  for ((n = ${#BED_PIDS[@]} - 1; n >= 0; n--)); do kill "${BED_PIDS[n]}" 2>/dev/null; done
  for p in "${BED_PIDS[@]}"; do wait "$p" 2>/dev/null; done
  BED_PIDS=()
  for n in "${BED_NS[@]}"; do bed_ns_reap "$n"; ip netns del "$n" 2>/dev/null; done
  if [ -n "${WORK:-}" ] && [ -d "$WORK" ]; then
    # dockerd killed hard may leave mounts under its data or exec root
    awk -v w="$WORK/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r mnt; do
      umount -l "$mnt"
    done
    rm -rf "$WORK"
  fi
  return "$rc"
}
