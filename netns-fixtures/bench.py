#!/usr/bin/env python3
"""Helpers of netns-fixtures/bench.sh (standard library only); see bench.sh's header for what is measured.

  bench.py payloads KIND ARGS...    the blaster's flows ("SRC_PORT HEX_UDP_PAYLOAD" per line) on stdout
  bench.py pps DIR ...              one packet-rate test (full speed, then a short search); TSV lines on stdout
  bench.py iperf FILE...            summed received Gbit/s and bytes of iperf3 -J outputs
  bench.py worker-split NS BEFORE   the busiest worker's share of what weft in NS received since BEFORE
  bench.py sockperf FILE            p50 p99 p99.9 RTT (us) of a sockperf ping-pong run
  bench.py lease-mac ETCDCTL_ARGS.. IP   VtepMAC of the lease whose PublicIP is IP
  bench.py report RAW.tsv N SECS    the table (median of the runs [min-max]) from the raw per-run values
"""
import json
import os
import re
import statistics
import struct
import subprocess
import sys
import time

PAYLOAD = 64            # UDP payload of the packet-rate tests
FLOWS = 16              # distinct UDP source ports (spread over weft's workers, as RSS would)
SPORT0 = 40000
DPORT = 9               # the inner UDP destination port (discard); the sinks drop it
LOSS_OK = 0.001         # "loss-free": under 0.1 % lost
TUN = "weft0"


# ---------------------------------------------------------------- frames
def mac(s):
    return bytes(int(x, 16) for x in s.split(":"))


def ip4(s):
    return bytes(int(x) for x in s.split("."))


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(src, dst, payload, proto=17, ident=0):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0x4000, 64, proto, 0, ip4(src), ip4(dst))
    return h[:10] + struct.pack("!H", csum(h)) + h[12:] + payload


def udp(src, dst, sport, dport, payload, with_csum=True):
    u = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    if with_csum:
        c = csum(ip4(src) + ip4(dst) + struct.pack("!BBH", 0, 17, len(u)) + u) or 0xFFFF
        u = u[:6] + struct.pack("!H", c) + u[8:]
    return u


def eth(dst, src, payload):
    return mac(dst) + mac(src) + b"\x08\x00" + payload


def inner_ip(src, dst, i):
    return ipv4(src, dst, udp(src, dst, SPORT0 + i, DPORT, bytes([0x41]) * PAYLOAD), ident=i)


def payloads(kind, a):
    """plain SRC DST | vxlan VNI IDMAC ISMAC SRC DST | udp SRC DST: one line per flow, the UDP source port
    and payload the blaster sends (plain: to the inner destination; vxlan/udp: to the peer's tunnel port)."""
    for i in range(FLOWS):
        if kind == "plain":
            sport, payload = SPORT0 + i, bytes([0x41]) * PAYLOAD
        elif kind == "vxlan":
            vni, idmac, ismac, src, dst = a
            # the outer source port varies per flow, as Linux VXLAN's does
            sport = 49152 + i
            payload = struct.pack("!B3sI", 0x08, b"\0\0\0", int(vni) << 8) + eth(idmac, ismac, inner_ip(src, dst, i))
        elif kind == "udp":
            src, dst = a
            sport, payload = 49152 + i, inner_ip(src, dst, i)
        else:
            sys.exit(f"bench.py: unknown payload kind {kind}")
        print(sport, payload.hex())


# ---------------------------------------------------------------- counters
def sh(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True).stdout


def links(ns):
    try:
        return {l["ifname"]: l.get("stats64", {}) for l in json.loads(sh("ip", "-n", ns, "-s", "-j", "link", "show"))}
    except (json.JSONDecodeError, KeyError):
        return {}


def tuns(ns):
    """The names of the tun devices (link type "none": weft's, wireguard-go's) in ns."""
    try:
        return {l["ifname"] for l in json.loads(sh("ip", "-n", ns, "-j", "link", "show")) if l.get("link_type") == "none"}
    except (json.JSONDecodeError, KeyError):
        return set()


def snmp_udp(ns):
    lines = [l.split() for l in sh("ip", "netns", "exec", ns, "cat", "/proc/net/snmp").splitlines() if l.startswith("Udp:")]
    return dict(zip(lines[0][1:], map(int, lines[1][1:]))) if len(lines) >= 2 else {}


def weft_metrics(ns):
    out = {}
    for l in sh("ip", "netns", "exec", ns, "curl", "-s", "--max-time", "1", "http://127.0.0.1:8471/metrics").splitlines():
        m = re.match(r'(weft_drops_total|weft_packets_total)\{\w+="(\w+)"\} (\d+)', l)
        if m:
            out[f"{m[1]}:{m[2]}"] = int(m[3])
    return out


def worker_split(argv):
    """worker-split NS BEFORE_FILE: the busiest worker's share of the packets weft in NS received since
    BEFORE_FILE (a /metrics text), from weft_worker_packets_total; nothing if there is no such counter."""
    ns, before = argv
    def rx(text):
        return {m[1]: int(m[2]) for m in re.finditer(r'weft_worker_packets_total\{worker="(\d+)",direction="rx"\} (\d+)', text)}
    a = rx(open(before).read())
    b = rx(sh("ip", "netns", "exec", ns, "curl", "-s", "--max-time", "1", "http://127.0.0.1:8471/metrics"))
    d = [b[k] - a.get(k, 0) for k in b]
    if d and sum(d) > 0:
        print(f"{max(d) / sum(d):.3f}")


def softnet_dropped():
    return sum(int(l.split()[1], 16) for l in open("/proc/net/softnet_stat"))


def snapshot(nss, weft_nss):
    return {
        "links": {ns: links(ns) for ns in nss},
        "tuns": {ns: tuns(ns) for ns in nss},
        "udp": {ns: snmp_udp(ns) for ns in nss},
        "weft": {ns: weft_metrics(ns) for ns in weft_nss},
        "softnet": softnet_dropped(),
    }


def stat(s, ns, dev, d, k):
    return s["links"].get(ns, {}).get(dev, {}).get(d, {}).get(k, 0)


def drops(a, b):
    """Where packets were dropped between snapshots a and b: {where: count}."""
    out = {}

    def add(k, v):
        if v > 0:
            out[k] = out.get(k, 0) + v

    for ns, devs in b["links"].items():
        for dev in devs:
            for d in ("rx", "tx"):
                v = stat(b, ns, dev, d, "dropped") - stat(a, ns, dev, d, "dropped")
                add(f"tun-{d}" if dev == TUN or dev in b["tuns"].get(ns, ()) else f"veth-{d}", v)
    for ns in b["udp"]:
        short = ns.rsplit("-", 1)[-1]
        for k, name in (("RcvbufErrors", "UdpRcvbufErrors"), ("InErrors", "UdpInErrors"), ("SndbufErrors", "UdpSndbufErrors")):
            add(f"{short}:{name}", b["udp"][ns].get(k, 0) - a["udp"].get(ns, {}).get(k, 0))
    for ns in b["weft"]:
        short = ns.rsplit("-", 1)[-1]
        for k, v in b["weft"][ns].items():
            if k.startswith("weft_drops_total:"):
                add(f"{short}:weft-{k.split(':')[1]}", v - a["weft"].get(ns, {}).get(k, 0))
    add("softnet-backlog", b["softnet"] - a["softnet"])
    return out


# ---------------------------------------------------------------- packet rate
GSO_HDR = 14 + 20 + 8  # Ethernet, IPv4, UDP: repeated in each frame a GSO packet becomes
def pps(argv):
    """pps DIR GEN_NS DST_IP:PORT PAYLOADS OFF_NS:DEV FWD_NS:DEV FWD_DIR(rx|tx) FRAME WINDOW NSS WEFT_NSS

    The generator is the blaster (examples/blaster.rs, $BLASTER) in GEN_NS sending PAYLOADS to DST_IP:PORT.

    FRAME: the bytes of one forwarded frame as the forwarded-side device counts it. Forwarded frames are
    counted from bytes, not packets: a GSO packet (a UDP GSO train, a GRO-coalesced tun write) crosses a
    veth whole and counts as one packet of HDR + n * (FRAME - HDR) bytes, HDR being its Ethernet, IP and
    UDP headers, which each of the n frames it becomes on a wire repeats."""
    d, gns, dst, cfg, off, fwd, fdir, frame, window, nss, wnss = argv
    dip, dport = dst.split(":")
    frame, window = int(frame), float(window)
    nss, wnss = nss.split(","), [n for n in wnss.split(",") if n]
    ons, odev = off.split(":")
    fns, fdev = fwd.split(":")

    def one(rate, secs):
        a = snapshot(nss, wnss)
        cmd = ["ip", "netns", "exec", gns, os.environ["BLASTER"], dip, dport, cfg, str(int(rate or 0)), str(secs)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        time.sleep(0.2)  # let queues drain before the second snapshot
        b = snapshot(nss, wnss)
        m = re.search(r"sent (\d+) in ([\d.]+) s", out.stdout)
        dur = float(m[2]) if m else secs
        offered = (stat(b, ons, odev, "tx", "packets") + stat(b, ons, odev, "tx", "dropped")
                   - stat(a, ons, odev, "tx", "packets") - stat(a, ons, odev, "tx", "dropped"))
        skbs = stat(b, fns, fdev, fdir, "packets") - stat(a, fns, fdev, fdir, "packets")
        byts = stat(b, fns, fdev, fdir, "bytes") - stat(a, fns, fdev, fdir, "bytes")
        fwdd = round((byts - skbs * GSO_HDR) / (frame - GSO_HDR))
        loss = 1 - fwdd / offered if offered > 0 else float("nan")
        wc = {k: sum(b["weft"][ns].get(k, 0) - a["weft"].get(ns, {}).get(k, 0) for ns in b["weft"])
              for k in ("weft_packets_total:tx", "weft_packets_total:rx")}
        print(f"  {d} rate={'full' if not rate else int(rate)}: offered {offered} fwd {fwdd} in {dur:.2f}s "
              f"loss {loss * 100:.3f}%; weft tx {wc['weft_packets_total:tx']} rx {wc['weft_packets_total:rx']}; "
              f"drops {drops(a, b)}", file=sys.stderr)
        return offered / dur, fwdd / dur, loss, drops(a, b), offered

    off_full, fwd_full, loss_full, dr, n_off = one(None, window + 0.5)
    print(f"{d}_offered_full_kpps\t{off_full / 1e3:.1f}")
    print(f"{d}_fwd_full_kpps\t{fwd_full / 1e3:.1f}")
    for k, v in sorted(dr.items()):
        print(f"{d}_drop_pct:{k}\t{100 * v / max(1, n_off):.2f}")
    if loss_full < LOSS_OK:
        best = fwd_full   # the path kept up with the generator: a lower bound
        print(f"{d}_lossfree_is_generator_bound\t1")
    else:
        # bisect below the overload figure; halve while nothing passed
        best, lo, hi, r, tried = 0.0, 0.0, off_full, 0.9 * fwd_full, []
        for _ in range(3):
            o, f, loss, _, _ = one(r, window)
            tried.append(o)
            if loss < LOSS_OK:
                lo, best = r, max(best, f)
            else:
                hi = r
            r = (lo + hi) / 2 if lo > 0 else r / 2
        if best == 0.0:   # lost >= 0.1 % at every rate tried: report the lowest one as an upper bound
            print(f"{d}_lossfree_below_kpps\t{min(tried) / 1e3:.1f}")
            return
    print(f"{d}_lossfree_kpps\t{best / 1e3:.1f}")


# ---------------------------------------------------------------- iperf3 / sockperf / leases
def iperf(files):
    bps, byts = 0.0, 0
    for f in files:
        try:
            s = json.load(open(f))["end"]["sum_received"]
            bps += s["bits_per_second"]
            byts += s["bytes"]
        except (OSError, ValueError, KeyError):
            print("nan 0")
            return
    print(f"{bps / 1e9:.3f} {byts}")


def sockperf(f):
    txt = open(f).read()
    p = {m[1]: float(m[2]) for m in re.finditer(r"percentile (\d+\.\d+) =\s+([\d.]+)", txt)}
    print(" ".join(f"{p.get(k, float('nan')):.1f}" for k in ("50.000", "99.000", "99.900")))


def lease_mac(argv):
    *cmd, ip = argv
    for l in sh(*cmd).splitlines():
        try:
            v = json.loads(l)
        except ValueError:
            continue
        if v.get("PublicIP") == ip:
            print(v.get("BackendData", {}).get("VtepMAC", ""))
            return


# ---------------------------------------------------------------- report
def is_v6(row):
    """The IPv6 rows are those whose names end in 6 (underlay6, kernel-vxlan6, weft-vxlan6@B, ...)."""
    return row.split("@")[0].endswith("6")


def baseline(row):
    """The row the ratios (x) are to: the kernel VXLAN of the row's family."""
    return "kernel-vxlan6" if is_v6(row) else "kernel-vxlan"


def underlay(row):
    return "underlay6" if is_v6(row) else "underlay"


COLS = [  # (key, header, decimals, ratio to the baseline (kernel-vxlan, or kernel-vxlan6 for IPv6 rows)?)
    ("tcp1_gbps", "TCP 1 stream Gbit/s", 2, True),
    ("tcp4_gbps", "TCP 4 procs Gbit/s", 2, True),
    ("tcp1_cpu", "box CPU s/GB", 2, True),
    ("tcp1_softirq", "softirq s/GB", 2, False),
    ("tcp1_extra", "extra s/GB vs underlay", 2, False),
    ("tcp4_cpu", "box CPU s/GB 4 procs", 2, False),
    ("tcp4_busiest", "busiest worker 4 procs", 2, False),
]
COLS2 = [
    ("encap_lossfree_kpps", "encap 64B kpps <0.1% loss", 0, True),
    ("encap_fwd_full_kpps", "encap kpps at full offer", 0, False),
    ("decap_lossfree_kpps", "decap 64B kpps <0.1% loss", 0, True),
    ("decap_fwd_full_kpps", "decap kpps at full offer", 0, False),
]
COLS3 = [
    ("rtt_idle_p50", "RTT idle p50 us", 1, True),
    ("rtt_idle_p99", "p99", 1, True),
    ("rtt_idle_p999", "p99.9", 1, False),
    ("rtt_load_p50", "RTT under load p50", 1, True),
    ("rtt_load_p99", "p99", 1, True),
]


def report(argv):
    raw, nruns, secs = argv[0], argv[1], argv[2]
    vals, order = {}, []   # (row, key) -> [values]; rows in first-seen order
    runs = {}
    for l in open(raw):
        if not l.strip() or l.startswith("run\t"):
            continue
        run, row, key, v = l.rstrip("\n").split("\t")
        v = float(v)
        if row not in order:
            order.append(row)
        vals.setdefault((row, key), []).append(v)
        runs.setdefault((row, key), {})[run] = v
    # extra CPU over the underlay (of the row's family), paired within each run
    for row in order:
        u = runs.get((underlay(row), "tcp1_cpu"), {})
        for run, v in runs.get((row, "tcp1_cpu"), {}).items():
            if run in u:
                vals.setdefault((row, "tcp1_extra"), []).append(v - u[run])

    def med(row, key):
        xs = [x for x in vals.get((row, key), []) if x == x]
        return statistics.median(xs) if xs else float("nan")

    def cell(row, key, dec, ratio):
        xs = [x for x in vals.get((row, key), []) if x == x]
        below = vals.get((row, key.replace("_lossfree_kpps", "_lossfree_below_kpps")), []) if "lossfree" in key else []
        if below and len(below) >= len(xs):
            return f"<{min(below):.{dec}f} (all lossy)"
        if not xs:
            return "-"
        m = statistics.median(xs)
        s = f"{m:.{dec}f}"
        if len(xs) > 1:
            s += f" [{min(xs):.{dec}f}-{max(xs):.{dec}f}]"
        b = med(baseline(row), key)
        if ratio and b == b and b > 0 and row != baseline(row):
            s += f" ({m / b:.2f}x)"
        return s

    cpu = sh("sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    import datetime, platform
    print(f"weft data plane benchmark, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"kernel {platform.release()}, {cpu}, {sh('nproc').strip()} cores")
    print(f"two netns hosts on a veth/bridge underlay (MTU 1500), container to container, {secs} s per test;")
    print(f"each cell: median of {nruns} interleaved runs [min-max]; (x) = ratio of medians to kernel-vxlan")
    if any(is_v6(r) for r in order):
        print("IPv6 rows (names ending in 6): container to container over IPv6 on an IPv6 underlay; (x) to "
              "kernel-vxlan6, extra s/GB over underlay6;\n  RTT by examples/pingpong.rs (sockperf 3.7 takes no "
              "IPv6 address): compare it among IPv6 rows only; no packet rate (\"-\")")
    for title, cols in (("throughput and whole-box CPU (per GB received, TCP 1 stream unless said)", COLS),
                        ("packet rate, 64-byte UDP payload (106-byte frames), each direction alone", COLS2),
                        ("sockperf UDP ping-pong RTT (14-byte messages), us"
                         + (" (IPv6 rows: examples/pingpong.rs)" if any(is_v6(r) for r in order) else ""), COLS3)):
        width = [max(len(h), *(len(cell(r, k, d, x)) for r in order)) + 2 for k, h, d, x in cols]
        print(f"\n{title}")
        print(f"{'path':<24}" + "".join(f"{h:>{w}}" for (k, h, d, x), w in zip(cols, width)))
        for r in order:
            print(f"{r:<24}" + "".join(f"{cell(r, k, d, x):>{w}}" for (k, h, d, x), w in zip(cols, width)))
    # rows left out of some runs (bench.sh: setup failed, or no ping passed)
    skipped = [(r, k, len(vals[(r, k)])) for r in order for k in ("setup_failed", "no_traffic") if (r, k) in vals]
    if skipped:
        print("\nrows not measured in some runs (their cells are from the other runs, or \"-\"):")
        for r, k, n in skipped:
            why = "setup failed" if k == "setup_failed" else "passed no traffic (no ping within ~55 s)"
            print(f"  {r:<22} {why} in {n} of {nruns} runs")
    # drops at full offer, per direction: median % of the offered packets, where nonzero in any run
    print("\ndrops at full offer (median % of offered packets over the runs; where they happened):")
    for r in order:
        for d in ("encap", "decap"):
            keys = sorted({k for (row, k) in vals if row == r and k.startswith(f"{d}_drop_pct:")})
            n = len(runs.get((r, f"{d}_fwd_full_kpps"), {})) or 1
            parts = []
            for k in keys:
                xs = vals[(r, k)] + [0.0] * (n - len(vals[(r, k)]))
                m = statistics.median(xs)
                if m >= 0.01:
                    parts.append(f"{k.split(':', 1)[1]} {m:.2f}%")
            off = med(r, f"{d}_offered_full_kpps")
            if off == off:
                k = len(vals.get((r, f"{d}_lossfree_is_generator_bound"), []))
                gb = "" if not k else " (path kept up with the generator" + ("" if k == n else f" in {k} of {n} runs") + ")"
                print(f"  {r:<22} {d}: offered {off:.0f} kpps, forwarded {med(r, f'{d}_fwd_full_kpps'):.0f}{gb}; "
                      + (", ".join(parts) if parts else "no counted drops"))


def main():
    cmd, argv = sys.argv[1], sys.argv[2:]
    if cmd == "worker-split":
        worker_split(argv)
    elif cmd == "payloads":
        payloads(argv[0], argv[1:])
    elif cmd == "pps":
        pps(argv)
    elif cmd == "iperf":
        iperf(argv)
    elif cmd == "sockperf":
        sockperf(argv[0])
    elif cmd == "lease-mac":
        lease_mac(argv)
    elif cmd == "report":
        report(argv)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
