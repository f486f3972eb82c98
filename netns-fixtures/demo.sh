#!/usr/bin/env bash
# weft demo: builds weft, then starts a real etcd and N weft hosts in network namespaces joined by an
# underlay bridge, and shows the leases, each host's subnet.env and route table; then gives each host a
# "container" on a bridge holding its leased subnet (as dockerd --bip would) and shows containers on
# different hosts reaching each other through weft (ping matrix, a short iperf3). Cleans up on every exit
# (the bed and its cleanup are netns-fixtures/lib.sh, shared with bench.sh).
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
. netns-fixtures/lib.sh
bed_prepare demo
bed_build_weft
bed_init demo wd                # namespaces and links carry the unique $ID; $UL is the underlay "switch", etcd's host

rm_containers() { # the --docker containers, before their dockerd goes
  for i in $(seq 1 "$HOSTS"); do
    [ -S "$WORK/d$i/docker.sock" ] && docker -H "unix://$WORK/d$i/docker.sock" rm -f "c$i" >/dev/null 2>&1
  done
}
bed_on_cleanup rm_containers

echo "== underlay: namespace $UL with bridge br0, etcd on $ETCD_IP:2379"
bed_up "$HOSTS"
ETCD_PID=$BED_PID

echo "== network config"
ip netns exec "$UL" "$WEFT" config set "$EP" "{\"Network\":\"10.5.0.0/16\",\"Backend\":{\"Type\":\"$BACKEND\"}}"

echo "== starting weft on $HOSTS hosts"
for i in $(seq 1 "$HOSTS"); do
  mkdir -p "$WORK/h$i"
  MASQ=(); [ "$DOCKER" = 1 ] && MASQ=(--ip-masq)
  bed_weft_run "$i" "$WORK/h$i/subnet.env" "$WORK/h$i/weft.log" "${MASQ[@]}" --underlay "$UNDERLAY"
done
for i in $(seq 1 "$HOSTS"); do bed_weft_wait "$i" "$WORK/h$i/subnet.env"; done
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

ping_from() { # I IP: container I pings IP
  if [ "$DOCKER" = 1 ]; then
    docker -H "unix://$WORK/d$1/docker.sock" exec "c$1" ping -c2 -W2 "$2" >/dev/null 2>&1
  else
    ip netns exec "$ID-c$1" ping -c2 -W2 -q "$2" >/dev/null 2>&1
  fi
}
ping_matrix() { # heading
  echo
  echo "== ping matrix ($1, across hosts)"
  for i in $(seq 1 "$HOSTS"); do
    line="   from c$i:"
    for j in $(seq 1 "$HOSTS"); do
      [ "$i" = "$j" ] && continue
      if ping_from "$i" "${CIPS[$((j-1))]}"; then r=ok; else r=FAIL; fi
      line="$line  c$j ${CIPS[$((j-1))]} $r"
    done
    echo "$line"
  done
}

CIPS=()
if [ "$DOCKER" = 1 ]; then
  echo
  echo "== dockerd on each host, started with the options weft docker-opts wrote; one busybox container each"
  mkdir -p "$WORK/img/bin"; cp /bin/busybox "$WORK/img/bin/"
  for a in sh ping sleep wget nc; do ln -sf busybox "$WORK/img/bin/$a"; done
  tar -C "$WORK/img" -cf "$WORK/busybox.tar" .
  for i in $(seq 1 "$HOSTS"); do
    d="$WORK/d$i"; mkdir -p "$d"
    "$WEFT" docker-opts -f "$WORK/h$i/subnet.env" -d "$d/docker_opts.env" -c
    # shellcheck disable=SC1091
    . "$d/docker_opts.env"
    echo "   host $i: dockerd $DOCKER_OPTS"
    # shellcheck disable=SC2086
    bed_spawn "$d/dockerd.log" nsenter --net="/var/run/netns/$ID-h$i" dockerd $DOCKER_OPTS --data-root "$d/root" \
      --exec-root "$d/exec" -H "unix://$d/docker.sock" --pidfile "$d/docker.pid" --storage-driver vfs
    D="docker -H unix://$d/docker.sock"
    for _ in $(seq 1 120); do $D info >/dev/null 2>&1 && break; sleep 0.5; done
    $D import "$WORK/busybox.tar" weft-busybox:1 >/dev/null
    $D run -d --name "c$i" weft-busybox:1 sleep 3600 >/dev/null
    CIPS+=("$($D inspect -f '{{.NetworkSettings.IPAddress}}' "c$i")")
    echo "   host $i: container c$i ${CIPS[$((i-1))]}"
  done
  ping_matrix "docker exec cI ping cJ"
  echo
  echo "== c1 reaches the outside (the underlay switch, $ETCD_IP) through weft's --ip-masq"
  if ping_from 1 "$ETCD_IP"; then echo "   ok"; else echo "   FAIL"; fi
else
  echo
  echo "== containers: a bridge with each host's subnet .1 and a container namespace with .2 (what dockerd --bip builds)"
  for i in $(seq 1 "$HOSTS"); do
    sub=$(bed_env "$WORK/h$i/subnet.env" FLANNEL_SUBNET)      # e.g. 10.5.72.1/24
    mtu=$(bed_env "$WORK/h$i/subnet.env" FLANNEL_MTU)
    bed_container "$i" "$sub" "$mtu"
    CIPS+=("$CIP")
    echo "   host $i: container $CIP (bridge $sub, MTU $mtu)"
  done
  ping_matrix "container -> container"
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
fi

if [ "$KEEP" = 1 ]; then
  echo
  echo "== running; namespaces $ID-*; logs in $WORK. Ctrl-C to stop and clean up."
  wait "$ETCD_PID"
fi
echo
echo "== demo done; cleaning up"
