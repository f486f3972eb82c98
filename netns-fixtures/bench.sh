#!/usr/bin/env bash
# Side-by-side data plane benchmark on one two-host netns bed, in one run: the underlay itself, kernel VXLAN
# set up as flanneld does, weft's userspace vxlan (with and without its fast paths, with --cpu-local, and over AF_XDP), weft udp, and weft's
# kernel backend. For each: iperf3 TCP 1 and 4 streams, 64-byte UDP packet rate, ping RTT p50/p99, and weft's
# CPU seconds per GB moved. Prints one table with every figure also as a ratio to kernel VXLAN, and writes it
# to bench-results/. A benchmark: it never fails on a number.
#   usage: netns-fixtures/bench.sh [--time SECONDS] [--only "row names"]
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=5
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --time) SECS="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    *) echo "usage: $0 [--time SECONDS] [--only \"row names\"]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "bench: run as root (it creates network namespaces)" >&2; exit 1; }

bash netns-fixtures/deps.sh
echo "== building weft (release)" >&2
cargo build --release --quiet
WEFT="$PWD/target/release/weft"

ID="wb$$"
UL="$ID-ul"; H1="$ID-h1"; H2="$ID-h2"; C1="$ID-c1"; C2="$ID-c2"
ETCD_IP=10.250.0.254
WORK=$(mktemp -d /tmp/weft-bench-XXXXXX)
PIDS=()
WPIDS=()
cleanup() {
  set +e
  for p in "${WPIDS[@]}" "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${WPIDS[@]}" "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  for n in "$C1" "$C2" "$H1" "$H2" "$UL"; do ip netns del "$n" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# --- the bed: two hosts on an underlay bridge, etcd on the underlay
ip netns add "$UL"; ip -n "$UL" link set lo up
ip -n "$UL" link add br0 type bridge; ip -n "$UL" addr add "$ETCD_IP/24" dev br0; ip -n "$UL" link set br0 up
for i in 1 2; do
  h="$ID-h$i"; ip netns add "$h"; ip -n "$h" link set lo up
  ip link add eth0 netns "$h" type veth peer name "p$i" netns "$UL"
  ip -n "$UL" link set "p$i" master br0 up
  ip -n "$h" addr add "10.250.0.$i/24" dev eth0; ip -n "$h" link set eth0 up
  ip -n "$h" route add default via "$ETCD_IP"
  ip netns exec "$h" sysctl -qw net.ipv4.ip_forward=1
done
nsenter --net="/var/run/netns/$UL" etcd --name bench --data-dir "$WORK/etcd" \
  --listen-client-urls "http://$ETCD_IP:2379" --advertise-client-urls "http://$ETCD_IP:2379" \
  --listen-peer-urls "http://127.0.0.1:2380" --initial-advertise-peer-urls "http://127.0.0.1:2380" \
  --initial-cluster "bench=http://127.0.0.1:2380" >"$WORK/etcd.log" 2>&1 &
PIDS+=($!)
EP="--etcd-endpoints=http://$ETCD_IP:2379"
for _ in $(seq 1 100); do ip netns exec "$UL" etcdctl --endpoints="http://$ETCD_IP:2379" endpoint health >/dev/null 2>&1 && break; sleep 0.1; done

# Containers: a bridge with <subnet>.1 on each host and a namespace with .2 behind it (dockerd --bip).
add_containers() { # subnet1 subnet2 mtu   (subnets as a.b.c.0/24)
  local mtu=$3 i=1
  for sub in "$1" "$2"; do
    local h="$ID-h$i" c="$ID-c$i" base=${1%.0/*}; base=${sub%.0/*}
    ip netns add "$c"; ip -n "$c" link set lo up
    ip -n "$h" link add cbr0 type bridge; ip -n "$h" addr add "$base.1/24" dev cbr0; ip -n "$h" link set cbr0 up
    ip link add eth0 netns "$c" mtu "$mtu" type veth peer name vc netns "$h" mtu "$mtu"
    ip -n "$h" link set vc master cbr0 up
    ip -n "$c" addr add "$base.2/24" dev eth0; ip -n "$c" link set eth0 up; ip -n "$c" route add default via "$base.1"
    i=$((i + 1))
  done
}
del_containers() {
  for i in 1 2; do ip netns del "$ID-c$i" 2>/dev/null || true; ip -n "$ID-h$i" link del cbr0 2>/dev/null || true; done
}

cpu_ticks() { # total utime+stime (clock ticks) of the weft processes
  local t=0
  for p in "${WPIDS[@]}"; do
    [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}

# measure NAME SRC_NS DST_NS DST_IP -> appends one line of figures to $WORK/results
measure() {
  local name=$1 src=$2 dst=$3 ip=$4
  ip netns exec "$dst" iperf3 -s -D -B "$ip" --pidfile "$WORK/iperf.pid" >/dev/null 2>&1
  for _ in $(seq 1 50); do ip netns exec "$src" ping -c1 -W1 "$ip" >/dev/null 2>&1 && break; sleep 0.1; done
  local t0; t0=$(cpu_ticks)
  ip netns exec "$src" iperf3 -c "$ip" -t "$SECS" -J >"$WORK/tcp1.json" 2>/dev/null || true
  local t1; t1=$(cpu_ticks)
  ip netns exec "$src" iperf3 -c "$ip" -t "$SECS" -P 4 -J >"$WORK/tcp4.json" 2>/dev/null || true
  ip netns exec "$src" iperf3 -c "$ip" -t "$SECS" -u -l 64 -b 0 -J >"$WORK/udp.json" 2>/dev/null || true
  ip netns exec "$src" ping -c 1000 -i 0.002 "$ip" >"$WORK/ping.txt" 2>/dev/null || true
  kill "$(cat "$WORK/iperf.pid")" 2>/dev/null || true
  python3 - "$name" "$WORK" "$t0" "$t1" "$(getconf CLK_TCK)" "${#WPIDS[@]}" >>"$WORK/results" <<'PY'
import json, re, sys
name, work, t0, t1, hz, weft = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
def load(f):
    try: return json.load(open(f"{work}/{f}"))
    except Exception: return {}
def gbps(j):
    try: return j["end"]["sum_received"]["bits_per_second"] / 1e9
    except Exception: return float("nan")
tcp1, tcp4, udp = load("tcp1.json"), load("tcp4.json"), load("udp.json")
try:
    s = udp["end"]["sum"]
    pps = (s["packets"] - s["lost_packets"]) / s["seconds"] / 1e3
except Exception:
    pps = float("nan")
rtts = sorted(float(m) for m in re.findall(r"time=([\d.]+) ms", open(f"{work}/ping.txt").read()))
pct = lambda p: rtts[min(len(rtts) - 1, int(p * len(rtts)))] * 1000 if rtts else float("nan")
try:
    gb = tcp1["end"]["sum_received"]["bytes"] / 1e9
    cpu = (t1 - t0) / hz / gb if weft and gb > 0 else float("nan")
except Exception:
    cpu = float("nan")
print(f"{name}\t{gbps(tcp1):.3f}\t{gbps(tcp4):.3f}\t{pps:.1f}\t{pct(0.5):.1f}\t{pct(0.99):.1f}\t{cpu:.2f}")
PY
  echo "   $(tail -1 "$WORK/results")" >&2
}

want() { [ -z "$ONLY" ] || [[ " $ONLY " == *" $1 "* ]]; }

start_weft() { # backend dataplane [extra flags...]
  local backend=$1 dp=$2; shift 2
  ip netns exec "$UL" "$WEFT" config set "$EP" "{\"Network\":\"10.5.0.0/16\",\"Backend\":{\"Type\":\"$backend\"}}" >/dev/null
  ip netns exec "$UL" etcdctl --endpoints="http://$ETCD_IP:2379" del --prefix /coreos.com/network/subnets/ >/dev/null
  WPIDS=()
  for i in 1 2; do
    rm -f "$WORK/s$i.env"
    ip netns exec "$ID-h$i" "$WEFT" run "$EP" --dataplane "$dp" --subnet-file "$WORK/s$i.env" "$@" >"$WORK/weft$i.log" 2>&1 &
    WPIDS+=($!)
  done
  for i in 1 2; do for _ in $(seq 1 100); do [ -s "$WORK/s$i.env" ] && break; sleep 0.1; done; done
  local s1 s2 mtu
  s1=$(sed -n 's/^FLANNEL_SUBNET=\(.*\)\.1\/24/\1.0\/24/p' "$WORK/s1.env")
  s2=$(sed -n 's/^FLANNEL_SUBNET=\(.*\)\.1\/24/\1.0\/24/p' "$WORK/s2.env")
  mtu=$(sed -n 's/^FLANNEL_MTU=//p' "$WORK/s1.env")
  add_containers "$s1" "$s2" "$mtu"
  C2IP="${s2%.0/24}.2"
}
stop_weft() {
  for p in "${WPIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${WPIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  WPIDS=()
  for i in 1 2; do ip -n "$ID-h$i" link del flannel.1 2>/dev/null || true; done
  del_containers
}

: >"$WORK/results"
echo "== measuring ($SECS s per test)" >&2

if want underlay; then
  measure underlay "$H1" "$H2" 10.250.0.2
fi

if want kernel-vxlan; then
  # flanneld's vxlan backend, by hand: flannel.1 with neighbour, FDB and onlink route per peer.
  for i in 1 2; do
    h="$ID-h$i"; j=$((3 - i))
    ip -n "$h" link add flannel.1 type vxlan id 1 local "10.250.0.$i" dev eth0 dstport 8472 nolearning
    ip -n "$h" link set flannel.1 address "0e:00:00:00:00:0$i" mtu 1450 up
    ip -n "$h" addr add "10.5.$i.0/32" dev flannel.1
  done
  for i in 1 2; do
    h="$ID-h$i"; j=$((3 - i))
    ip -n "$h" neigh replace "10.5.$j.0" lladdr "0e:00:00:00:00:0$j" dev flannel.1 nud permanent
    ip netns exec "$h" bridge fdb replace "0e:00:00:00:00:0$j" dst "10.250.0.$j" dev flannel.1 self permanent
    ip -n "$h" route replace "10.5.$j.0/24" via "10.5.$j.0" dev flannel.1 onlink
  done
  add_containers 10.5.1.0/24 10.5.2.0/24 1450
  measure kernel-vxlan "$C1" "$C2" 10.5.2.2
  stop_weft
fi

if want weft-vxlan; then
  start_weft vxlan userspace
  measure weft-vxlan "$C1" "$C2" "$C2IP"
  stop_weft
fi

if want weft-vxlan-plain; then
  start_weft vxlan userspace --no-offload --no-batch --workers 1
  measure weft-vxlan-plain "$C1" "$C2" "$C2IP"
  stop_weft
fi

if want weft-vxlan-cpu-local; then
  start_weft vxlan userspace --cpu-local
  measure weft-vxlan-cpu-local "$C1" "$C2" "$C2IP"
  stop_weft
fi

if want weft-vxlan-afxdp; then
  # AF_XDP on the underlay veths: copy mode only (veth has no zero-copy), no UDP GSO/GRO on that path.
  start_weft vxlan userspace --underlay af-xdp
  measure weft-vxlan-afxdp "$C1" "$C2" "$C2IP"
  stop_weft
fi

if want weft-udp; then
  start_weft udp userspace
  measure weft-udp "$C1" "$C2" "$C2IP"
  stop_weft
fi

if want weft-kernel; then
  start_weft vxlan kernel
  measure weft-kernel "$C1" "$C2" "$C2IP"
  stop_weft
fi

mkdir -p bench-results
OUT="bench-results/bench-$(date -u +%Y%m%dT%H%M%SZ).txt"
python3 - "$WORK/results" "$SECS" >"$OUT" <<'PY'
import math, platform, subprocess, sys, datetime
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
rows = [(r[0], [float(x) for x in r[1:]]) for r in rows]
base = dict(rows).get("kernel-vxlan")
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
print(f"weft data plane benchmark, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, kernel {platform.release()}, {cpu}, {subprocess.run(['nproc'],capture_output=True,text=True).stdout.strip()} cores")
print(f"two netns hosts on a veth/bridge underlay (MTU 1500), container to container, {sys.argv[2]} s per test; (x) = ratio to kernel-vxlan")
cols = ["TCP 1 stream Gbit/s", "TCP 4 streams Gbit/s", "UDP 64B kpps", "RTT p50 us", "RTT p99 us", "weft CPU s/GB"]
print(f"{'path':<22}" + "".join(f"{c:>24}" for c in cols))
for name, v in rows:
    cells = []
    for i, x in enumerate(v):
        if math.isnan(x):
            cells.append("-")
        elif base and not math.isnan(base[i]) and base[i] > 0 and i < 5:
            cells.append(f"{x:.2f} ({x / base[i]:.2f}x)" if i < 3 else f"{x:.0f} ({x / base[i]:.2f}x)")
        else:
            cells.append(f"{x:.2f}")
    print(f"{name:<22}" + "".join(f"{c:>24}" for c in cells))
PY
cat "$OUT"
echo "(written to $OUT)" >&2
