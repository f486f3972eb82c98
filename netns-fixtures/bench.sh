#!/usr/bin/env bash
# Side-by-side data plane benchmark on one two-host netns bed, in one run: the underlay itself, kernel VXLAN
# set up as flanneld does, weft's userspace vxlan (with and without its fast paths, with --cpu-local, and over AF_XDP), weft udp, and weft's
# kernel backend. For each: iperf3 TCP 1 and 4 streams, 64-byte UDP packet rate, ping RTT p50/p99, and weft's
# CPU seconds per GB moved. Prints one table with every figure also as a ratio to kernel VXLAN, and writes it
# to bench-results/. A benchmark: it never fails on a number. The bed and its cleanup are netns-fixtures/lib.sh.
#   usage: [WEFT_BIN=path/to/weft] netns-fixtures/bench.sh [--time SECONDS] [--only "row names"]
#   rows (in this order): underlay kernel-vxlan weft-vxlan weft-vxlan-plain weft-vxlan-cpu-local weft-vxlan-afxdp
#                         weft-udp weft-kernel
#   WEFT_BIN: a prebuilt weft binary (e.g. an older commit's) used for every weft row instead of building this
#   tree with `cargo build --release`; a relative path is taken from the directory bench.sh is started in.
set -euo pipefail
[ -z "${WEFT_BIN:-}" ] || WEFT_BIN=$(realpath "$WEFT_BIN")
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
. netns-fixtures/lib.sh
bed_prepare bench
if [ -n "${WEFT_BIN:-}" ]; then
  [ -x "$WEFT_BIN" ] || { echo "bench: WEFT_BIN=$WEFT_BIN is not an executable" >&2; exit 1; }
  echo "== weft: $WEFT_BIN (WEFT_BIN; not building)" >&2
  WEFT=$WEFT_BIN
else
  bed_build_weft >&2
fi

bed_init bench wb
H1="$ID-h1"; H2="$ID-h2"; C1="$ID-c1"; C2="$ID-c2"
WPIDS=()        # the weft daemons of the current row

# --- the bed: two hosts on an underlay bridge, etcd on the underlay
bed_up 2
for h in "$H1" "$H2"; do ip netns exec "$h" sysctl -qw net.ipv4.ip_forward=1; done

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
  local i mtu
  for i in 1 2; do
    rm -f "$WORK/s$i.env"
    bed_weft_run "$i" "$WORK/s$i.env" "$WORK/weft$i.log" --dataplane "$dp" "$@"
    WPIDS+=("$BED_PID")
  done
  for i in 1 2; do bed_weft_wait "$i" "$WORK/s$i.env"; done
  mtu=$(bed_env "$WORK/s1.env" FLANNEL_MTU)
  for i in 1 2; do bed_container "$i" "$(bed_env "$WORK/s$i.env" FLANNEL_SUBNET)" "$mtu"; done   # CIP: container 2
}
stop_weft() {
  [ ${#WPIDS[@]} = 0 ] || bed_kill "${WPIDS[@]}"
  WPIDS=()
  for i in 1 2; do ip -n "$ID-h$i" link del flannel.1 2>/dev/null || true; bed_container_del "$i"; done
}
weft_row() { # name backend dataplane [extra flags...]
  local name=$1; shift
  want "$name" || return 0
  start_weft "$@"
  measure "$name" "$C1" "$C2" "$CIP"
  stop_weft
}

: >"$WORK/results"
echo "== measuring ($SECS s per test)" >&2

if want underlay; then
  measure underlay "$H1" "$H2" 10.250.0.2
fi

if want kernel-vxlan; then
  # flanneld's vxlan backend, by hand: flannel.1 with neighbour, FDB and onlink route per peer.
  for i in 1 2; do
    h="$ID-h$i"
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
  bed_container 1 10.5.1.1/24 1450; bed_container 2 10.5.2.1/24 1450
  measure kernel-vxlan "$C1" "$C2" 10.5.2.2
  stop_weft
fi

weft_row weft-vxlan vxlan userspace
weft_row weft-vxlan-plain vxlan userspace --no-offload --no-batch --workers 1
weft_row weft-vxlan-cpu-local vxlan userspace --cpu-local
# AF_XDP on the underlay veths: copy mode only (veth has no zero-copy), no UDP GSO/GRO on that path.
weft_row weft-vxlan-afxdp vxlan userspace --underlay af-xdp
weft_row weft-udp udp userspace
weft_row weft-kernel vxlan kernel

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
