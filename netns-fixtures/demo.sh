#!/usr/bin/env bash
# weft demo: builds weft, then starts a real etcd and N weft hosts in network namespaces joined by an
# underlay bridge, and shows the leases, each host's subnet.env and route table. Cleans up on exit.
#   usage: netns-fixtures/demo.sh [--hosts N] [--backend vxlan|udp] [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."

HOSTS=3
BACKEND=vxlan
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --hosts) HOSTS="$2"; shift 2 ;;
    --backend) BACKEND="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    *) echo "usage: $0 [--hosts N] [--backend vxlan|udp] [--keep]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "demo: run as root (it creates network namespaces)" >&2; exit 1; }

bash netns-fixtures/deps.sh
echo "== building weft (release)"
cargo build --release --quiet
WEFT="$PWD/target/release/weft"

ID="wd$$"                       # unique per run: namespaces and links carry it
UL="$ID-ul"                     # the underlay "switch" namespace, also etcd's host
WORK=$(mktemp -d "/tmp/weft-demo-XXXXXX")
ETCD_IP=10.250.0.254
PIDS=()

cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  for i in $(seq 1 "$HOSTS"); do ip netns del "$ID-h$i" 2>/dev/null; done
  ip netns del "$UL" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

echo "== underlay: namespace $UL with bridge br0, etcd on $ETCD_IP:2379"
ip netns add "$UL"
ip -n "$UL" link set lo up
ip -n "$UL" link add br0 type bridge
ip -n "$UL" addr add "$ETCD_IP/24" dev br0
ip -n "$UL" link set br0 up

for i in $(seq 1 "$HOSTS"); do
  ns="$ID-h$i"
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip link add "$ID-v$i" type veth peer name eth0 netns "$ns"
  ip link set "$ID-v$i" netns "$UL"
  ip -n "$UL" link set "$ID-v$i" master br0 up
  ip -n "$ns" addr add "10.250.0.$i/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route add default via "$ETCD_IP"
done

nsenter --net="/var/run/netns/$UL" etcd --name demo --data-dir "$WORK/etcd" \
  --listen-client-urls "http://$ETCD_IP:2379" --advertise-client-urls "http://$ETCD_IP:2379" \
  --listen-peer-urls "http://127.0.0.1:2380" --initial-advertise-peer-urls "http://127.0.0.1:2380" \
  --initial-cluster "demo=http://127.0.0.1:2380" >"$WORK/etcd.log" 2>&1 &
PIDS+=($!)
EP="--etcd-endpoints=http://$ETCD_IP:2379"
for _ in $(seq 1 100); do
  ip netns exec "$UL" "$WEFT" config get "$EP" >/dev/null 2>&1 && break
  ip netns exec "$UL" etcdctl --endpoints="http://$ETCD_IP:2379" endpoint health >/dev/null 2>&1 && break
  sleep 0.1
done

echo "== network config"
ip netns exec "$UL" "$WEFT" config set "$EP" "{\"Network\":\"10.5.0.0/16\",\"Backend\":{\"Type\":\"$BACKEND\"}}"

echo "== starting weft on $HOSTS hosts"
for i in $(seq 1 "$HOSTS"); do
  ns="$ID-h$i"
  mkdir -p "$WORK/h$i"
  ip netns exec "$ns" "$WEFT" run "$EP" --subnet-file "$WORK/h$i/subnet.env" >"$WORK/h$i/weft.log" 2>&1 &
  PIDS+=($!)
done
for i in $(seq 1 "$HOSTS"); do
  for _ in $(seq 1 100); do
    ip netns exec "$ID-h$i" "$WEFT" status >/dev/null 2>&1 && [ -s "$WORK/h$i/subnet.env" ] && break
    sleep 0.1
  done
done
# Wait until every host sees all the others.
for i in $(seq 1 "$HOSTS"); do
  for _ in $(seq 1 100); do
    n=$(ip netns exec "$ID-h$i" "$WEFT" status 2>/dev/null | sed -n 's/^peers: //p')
    [ "${n:-0}" = $((HOSTS - 1)) ] && break
    sleep 0.1
  done
done

echo
echo "== weft leases"
ip netns exec "$UL" "$WEFT" leases "$EP"
for i in $(seq 1 "$HOSTS"); do
  echo
  echo "== host $i (10.250.0.$i): weft status"
  ip netns exec "$ID-h$i" "$WEFT" status
  echo "-- $WORK/h$i/subnet.env, and what dockerd gets from it (weft docker-opts):"
  sed 's/^/   /' "$WORK/h$i/subnet.env"
  "$WEFT" docker-opts -f "$WORK/h$i/subnet.env" -d - -c | sed 's/^/   /'
done

if [ "$KEEP" = 1 ]; then
  echo
  echo "== running; namespaces $ID-*; logs in $WORK. Ctrl-C to stop and clean up."
  wait "${PIDS[0]}"
fi
echo
echo "== demo done; cleaning up"
