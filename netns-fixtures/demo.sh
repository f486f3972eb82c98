#!/usr/bin/env bash
# weft demo: builds weft, then starts a real etcd and N weft hosts in network namespaces joined by an
# underlay bridge, and shows the leases, each host's subnet.env and route table; then gives each host a
# "container" on a bridge holding its leased subnet (as dockerd --bip would) and shows containers on
# different hosts reaching each other through weft (ping matrix, a short iperf3). Cleans up on exit.
# With --docker, each host runs a real dockerd (options from `weft docker-opts`, weft doing --ip-masq) and the
# containers are busybox containers built locally with `docker import`.
# With --underlay af-xdp, the hosts' userspace data planes use AF_XDP sockets on their underlay veths.
#   usage: netns-fixtures/demo.sh [--hosts N] [--backend vxlan|udp] [--underlay udp|af-xdp] [--docker] [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."

HOSTS=3
BACKEND=vxlan
KEEP=0
DOCKER=0
UNDERLAY=udp
while [ $# -gt 0 ]; do
  case "$1" in
    --docker) DOCKER=1; shift ;;
    --hosts) HOSTS="$2"; shift 2 ;;
    --backend) BACKEND="$2"; shift 2 ;;
    --underlay) UNDERLAY="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    *) echo "usage: $0 [--hosts N] [--backend vxlan|udp] [--underlay udp|af-xdp] [--docker] [--keep]" >&2; exit 2 ;;
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

DPIDS=()
cleanup() {
  local rc=$?
  set +e
  if [ "$rc" != 0 ]; then
    echo "demo: failed (exit $rc); the last lines of each weft log:" >&2
    for i in $(seq 1 "$HOSTS"); do
      [ -s "$WORK/h$i/weft.log" ] && { echo "-- host $i" >&2; tail -5 "$WORK/h$i/weft.log" >&2; }
    done
  fi
  for i in $(seq 1 "$HOSTS"); do
    [ -S "$WORK/d$i/docker.sock" ] && docker -H "unix://$WORK/d$i/docker.sock" rm -f "c$i" >/dev/null 2>&1
  done
  for p in "${DPIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${DPIDS[@]}"; do wait "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  for i in $(seq 1 "$HOSTS"); do ip netns del "$ID-h$i" 2>/dev/null; ip netns del "$ID-c$i" 2>/dev/null; done
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
  MASQ=""; [ "$DOCKER" = 1 ] && MASQ="--ip-masq"
  ip netns exec "$ns" "$WEFT" run "$EP" $MASQ --underlay "$UNDERLAY" --subnet-file "$WORK/h$i/subnet.env" >"$WORK/h$i/weft.log" 2>&1 &
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

if [ "$DOCKER" = 1 ]; then
  echo
  echo "== dockerd on each host, started with the options weft docker-opts wrote; one busybox container each"
  mkdir -p "$WORK/img/bin"; cp /bin/busybox "$WORK/img/bin/"
  for a in sh ping sleep wget nc; do ln -sf busybox "$WORK/img/bin/$a"; done
  tar -C "$WORK/img" -cf "$WORK/busybox.tar" .
  CIPS=()
  for i in $(seq 1 "$HOSTS"); do
    d="$WORK/d$i"; mkdir -p "$d"
    "$WEFT" docker-opts -f "$WORK/h$i/subnet.env" -d "$d/docker_opts.env" -c
    . "$d/docker_opts.env"
    echo "   host $i: dockerd $DOCKER_OPTS"
    # shellcheck disable=SC2086
    nsenter --net="/var/run/netns/$ID-h$i" dockerd $DOCKER_OPTS --data-root "$d/root" --exec-root "$d/exec" \
      -H "unix://$d/docker.sock" --pidfile "$d/docker.pid" --storage-driver vfs >"$d/dockerd.log" 2>&1 &
    DPIDS+=($!)
    D="docker -H unix://$d/docker.sock"
    for _ in $(seq 1 120); do $D info >/dev/null 2>&1 && break; sleep 0.5; done
    $D import "$WORK/busybox.tar" weft-busybox:1 >/dev/null
    $D run -d --name "c$i" weft-busybox:1 sleep 3600 >/dev/null
    CIPS+=("$($D inspect -f '{{.NetworkSettings.IPAddress}}' "c$i")")
    echo "   host $i: container c$i ${CIPS[$((i-1))]}"
  done
  echo
  echo "== ping matrix (docker exec cI ping cJ, across hosts)"
  for i in $(seq 1 "$HOSTS"); do
    line="   from c$i:"
    for j in $(seq 1 "$HOSTS"); do
      [ "$i" = "$j" ] && continue
      if docker -H "unix://$WORK/d$i/docker.sock" exec "c$i" ping -c2 -W2 "${CIPS[$((j-1))]}" >/dev/null 2>&1; then r=ok; else r=FAIL; fi
      line="$line  c$j ${CIPS[$((j-1))]} $r"
    done
    echo "$line"
  done
  echo
  echo "== c1 reaches the outside (the underlay switch, $ETCD_IP) through weft's --ip-masq"
  if docker -H "unix://$WORK/d1/docker.sock" exec c1 ping -c2 -W2 "$ETCD_IP" >/dev/null 2>&1; then echo "   ok"; else echo "   FAIL"; fi
  [ "$KEEP" = 1 ] && { echo; echo "== running; namespaces $ID-*; logs in $WORK. Ctrl-C to stop and clean up."; wait "${PIDS[0]}"; }
  echo
  echo "== demo done; cleaning up"
  exit 0
fi

echo
echo "== containers: a bridge with each host's subnet .1 and a container namespace with .2 (what dockerd --bip builds)"
CIPS=()
for i in $(seq 1 "$HOSTS"); do
  h="$ID-h$i"; c="$ID-c$i"
  sub=$(sed -n 's/^FLANNEL_SUBNET=//p' "$WORK/h$i/subnet.env")      # e.g. 10.5.72.1/24
  len=${sub#*/}; gw=${sub%/*}; cip="${gw%.*}.$(( ${gw##*.} + 1 ))"
  mtu=$(sed -n 's/^FLANNEL_MTU=//p' "$WORK/h$i/subnet.env")
  ip netns add "$c"; ip -n "$c" link set lo up
  ip -n "$h" link add cbr0 type bridge; ip -n "$h" addr add "$sub" dev cbr0; ip -n "$h" link set cbr0 up
  ip link add eth0 netns "$c" mtu "$mtu" type veth peer name vc netns "$h" mtu "$mtu"
  ip -n "$h" link set vc master cbr0 up
  ip -n "$c" addr add "$cip/$len" dev eth0; ip -n "$c" link set eth0 up; ip -n "$c" route add default via "$gw"
  CIPS+=("$cip")
  echo "   host $i: container $cip (bridge $sub, MTU $mtu)"
done
echo
echo "== ping matrix (container -> container, across hosts)"
for i in $(seq 1 "$HOSTS"); do
  line="   from c$i:"
  for j in $(seq 1 "$HOSTS"); do
    [ "$i" = "$j" ] && continue
    if ip netns exec "$ID-c$i" ping -c2 -W2 -q "${CIPS[$((j-1))]}" >/dev/null 2>&1; then r=ok; else r=FAIL; fi
    line="$line  c$j ${CIPS[$((j-1))]} $r"
  done
  echo "$line"
done
if [ "$HOSTS" -ge 2 ]; then
  echo
  echo "== iperf3, container 1 -> container 2 through weft ($BACKEND), 3 s"
  ip netns exec "$ID-c2" iperf3 -s -1 -D -B "${CIPS[1]}" >/dev/null 2>&1
  sleep 0.3
  ip netns exec "$ID-c1" iperf3 -c "${CIPS[1]}" -t 3 -f g 2>&1 | grep -E "sender|receiver" | sed 's/^/   /'
  echo
  echo "== host 1 metrics"
  ip netns exec "$ID-h1" sh -c "curl -s 127.0.0.1:8471/metrics 2>/dev/null || true" | grep -E '^weft_(packets|bytes)_total|^weft_drops_total.*[1-9]$' | sed 's/^/   /'
fi

if [ "$KEEP" = 1 ]; then
  echo
  echo "== running; namespaces $ID-*; logs in $WORK. Ctrl-C to stop and clean up."
  wait "${PIDS[0]}"
fi
echo
echo "== demo done; cleaning up"
