//! Counters shared with the data plane and their Prometheus text rendering.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Re-exported: the data plane counts drops by the reason its wire checks return.
use crate::wire::DropReason;

/// One worker's counters; only that worker writes them (relaxed atomics), `/metrics` sums them.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub drops: [AtomicU64; DropReason::ALL.len()],
    /// Underlay frames sent and received through AF_XDP sockets.
    pub xdp_tx_frames: AtomicU64,
    pub xdp_rx_frames: AtomicU64,
    /// Datagrams the AF_XDP path handed to the kernel's UDP socket (next hop unknown or stale).
    pub xdp_via_kernel: AtomicU64,
}

impl WorkerCounters {
    #[inline]
    pub fn dropped(&self, reason: DropReason) {
        self.drops[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub fn tx(&self, bytes: usize) {
        self.tx_packets.fetch_add(1, Ordering::Relaxed);
        self.tx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    #[inline]
    pub fn rx(&self, bytes: usize) {
        self.rx_packets.fetch_add(1, Ordering::Relaxed);
        self.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// Summed counters of all workers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CounterTotals {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub drops: [u64; DropReason::ALL.len()],
    pub xdp_tx_frames: u64,
    pub xdp_rx_frames: u64,
    pub xdp_via_kernel: u64,
}

impl CounterTotals {
    pub fn sum<'a>(workers: impl IntoIterator<Item = &'a WorkerCounters>) -> Self {
        let mut t = CounterTotals::default();
        for w in workers {
            t.tx_packets += w.tx_packets.load(Ordering::Relaxed);
            t.tx_bytes += w.tx_bytes.load(Ordering::Relaxed);
            t.rx_packets += w.rx_packets.load(Ordering::Relaxed);
            t.rx_bytes += w.rx_bytes.load(Ordering::Relaxed);
            t.xdp_tx_frames += w.xdp_tx_frames.load(Ordering::Relaxed);
            t.xdp_rx_frames += w.xdp_rx_frames.load(Ordering::Relaxed);
            t.xdp_via_kernel += w.xdp_via_kernel.load(Ordering::Relaxed);
            for (d, s) in t.drops.iter_mut().zip(&w.drops) {
                *d += s.load(Ordering::Relaxed);
            }
        }
        t
    }

    /// Per worker: (packets received, packets sent).
    pub fn per_worker<'a>(
        workers: impl IntoIterator<Item = &'a WorkerCounters>,
    ) -> Vec<(u64, u64)> {
        workers
            .into_iter()
            .map(|w| {
                (
                    w.rx_packets.load(Ordering::Relaxed),
                    w.tx_packets.load(Ordering::Relaxed),
                )
            })
            .collect()
    }
}

/// What `/metrics` reports.
#[derive(Debug, Default, Clone)]
pub struct MetricsView {
    pub lease_held: bool,
    /// "userspace", "kernel", "none", or "" before the data plane started.
    pub dataplane: &'static str,
    /// How the userspace data plane reaches the underlay ("udp", "af_xdp (...)"; "" otherwise).
    pub underlay: String,
    pub lease_ttl_seconds: Option<i64>,
    pub etcd_connected: bool,
    pub ready: bool,
    pub peers: usize,
    pub routes: usize,
    pub lease_renewals: u64,
    pub watch_events: u64,
    pub watch_restarts: u64,
    pub counters: CounterTotals,
    /// Per worker: (packets received, packets sent), to see how flows spread over the workers.
    pub per_worker: Vec<(u64, u64)>,
    /// Peer leases in etcd that are ignored, by reason label.
    pub invalid_leases: Vec<(&'static str, usize)>,
    /// The WireGuard sessions (wireguard backend).
    pub wireguard: Option<WireGuardView>,
}

/// The WireGuard part of `/metrics` and `/status`.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WireGuardView {
    pub public_key: String,
    pub listen_port: u16,
    /// Handshakes completed with any peer.
    pub handshakes: u64,
    pub peers: Vec<crate::wireguard::PeerStatus>,
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// Renders the view in the Prometheus text exposition format.
pub fn render(v: &MetricsView) -> String {
    let mut o = String::new();
    let b = |x: bool| u8::from(x);
    metric(
        &mut o,
        "weft_lease_held",
        "gauge",
        "1 while this host holds its subnet lease",
        b(v.lease_held),
    );
    if let Some(ttl) = v.lease_ttl_seconds {
        metric(
            &mut o,
            "weft_lease_ttl_seconds",
            "gauge",
            "Seconds left on the subnet lease at the last renewal",
            ttl,
        );
    }
    metric(
        &mut o,
        "weft_etcd_connected",
        "gauge",
        "1 while the last etcd request succeeded",
        b(v.etcd_connected),
    );
    metric(
        &mut o,
        "weft_ready",
        "gauge",
        "1 once subnet.env is written and the data plane is up",
        b(v.ready),
    );
    metric(
        &mut o,
        "weft_peers",
        "gauge",
        "Other hosts with a lease in the network",
        v.peers,
    );
    metric(
        &mut o,
        "weft_routes",
        "gauge",
        "Entries in the route table",
        v.routes,
    );
    metric(
        &mut o,
        "weft_lease_renewals_total",
        "counter",
        "Successful lease renewals",
        v.lease_renewals,
    );
    metric(
        &mut o,
        "weft_watch_events_total",
        "counter",
        "Lease events applied from the etcd watch",
        v.watch_events,
    );
    metric(
        &mut o,
        "weft_watch_restarts_total",
        "counter",
        "Times the etcd watch was re-established",
        v.watch_restarts,
    );
    let _ = writeln!(o, "# HELP weft_invalid_leases Peer leases in etcd ignored because they break flannel's rules, by reason\n# TYPE weft_invalid_leases gauge");
    for (reason, n) in &v.invalid_leases {
        let _ = writeln!(o, "weft_invalid_leases{{reason=\"{reason}\"}} {n}");
    }
    if !v.dataplane.is_empty() {
        let _ = writeln!(o, "# HELP weft_dataplane_info The data plane in use and how it reaches the underlay\n# TYPE weft_dataplane_info gauge");
        let _ = writeln!(
            o,
            "weft_dataplane_info{{kind=\"{}\",underlay=\"{}\"}} 1",
            v.dataplane, v.underlay
        );
    }
    let c = &v.counters;
    let _ = writeln!(o, "# HELP weft_packets_total Packets carried by the data plane\n# TYPE weft_packets_total counter");
    let _ = writeln!(o, "weft_packets_total{{direction=\"tx\"}} {}", c.tx_packets);
    let _ = writeln!(o, "weft_packets_total{{direction=\"rx\"}} {}", c.rx_packets);
    if !v.per_worker.is_empty() {
        let _ = writeln!(o, "# HELP weft_worker_packets_total Packets carried by each data-plane worker\n# TYPE weft_worker_packets_total counter");
        for (i, (rx, tx)) in v.per_worker.iter().enumerate() {
            let _ = writeln!(
                o,
                "weft_worker_packets_total{{worker=\"{i}\",direction=\"rx\"}} {rx}"
            );
            let _ = writeln!(
                o,
                "weft_worker_packets_total{{worker=\"{i}\",direction=\"tx\"}} {tx}"
            );
        }
    }
    let _ = writeln!(o, "# HELP weft_bytes_total Bytes carried by the data plane (inner packets)\n# TYPE weft_bytes_total counter");
    let _ = writeln!(o, "weft_bytes_total{{direction=\"tx\"}} {}", c.tx_bytes);
    let _ = writeln!(o, "weft_bytes_total{{direction=\"rx\"}} {}", c.rx_bytes);
    let _ = writeln!(
        o,
        "# HELP weft_drops_total Packets dropped, by reason\n# TYPE weft_drops_total counter"
    );
    for r in DropReason::ALL {
        let _ = writeln!(
            o,
            "weft_drops_total{{reason=\"{}\"}} {}",
            r.label(),
            c.drops[r as usize]
        );
    }
    let _ = writeln!(o, "# HELP weft_xdp_frames_total Underlay frames moved through AF_XDP sockets\n# TYPE weft_xdp_frames_total counter");
    let _ = writeln!(
        o,
        "weft_xdp_frames_total{{direction=\"tx\"}} {}",
        c.xdp_tx_frames
    );
    let _ = writeln!(
        o,
        "weft_xdp_frames_total{{direction=\"rx\"}} {}",
        c.xdp_rx_frames
    );
    metric(
        &mut o,
        "weft_xdp_via_kernel_total",
        "counter",
        "Datagrams the AF_XDP path sent through the kernel instead (next hop unknown or being revalidated)",
        c.xdp_via_kernel,
    );
    if let Some(wg) = &v.wireguard {
        render_wireguard(&mut o, wg, c);
    }
    o
}

fn render_wireguard(o: &mut String, wg: &WireGuardView, c: &CounterTotals) {
    metric(
        o,
        "weft_wireguard_handshakes_total",
        "counter",
        "WireGuard handshakes completed with any peer",
        wg.handshakes,
    );
    let _ = writeln!(o, "# HELP weft_wireguard_decrypt_failures_total WireGuard messages refused, by reason (also in weft_drops_total)
# TYPE weft_wireguard_decrypt_failures_total counter");
    for r in [
        DropReason::WgDecryptFailed,
        DropReason::WgReplay,
        DropReason::WgNoSession,
        DropReason::WgUnknownKey,
        DropReason::WgBadHandshake,
    ] {
        let _ = writeln!(
            o,
            "weft_wireguard_decrypt_failures_total{{reason=\"{}\"}} {}",
            r.label(),
            c.drops[r as usize]
        );
    }
    let _ = writeln!(
        o,
        "# HELP weft_wireguard_peer_handshakes_total WireGuard handshakes completed, per peer
# TYPE weft_wireguard_peer_handshakes_total counter"
    );
    for p in &wg.peers {
        let _ = writeln!(
            o,
            "weft_wireguard_peer_handshakes_total{{peer=\"{}\",subnet=\"{}\"}} {}",
            p.public_key, p.subnet, p.handshakes
        );
    }
    let _ = writeln!(
        o,
        "# HELP weft_wireguard_peer_bytes_total Plaintext bytes to and from each WireGuard peer
# TYPE weft_wireguard_peer_bytes_total counter"
    );
    for p in &wg.peers {
        for (dir, n) in [("tx", p.tx_bytes), ("rx", p.rx_bytes)] {
            let _ = writeln!(
                o,
                "weft_wireguard_peer_bytes_total{{peer=\"{}\",subnet=\"{}\",direction=\"{dir}\"}} {n}",
                p.public_key, p.subnet
            );
        }
    }
    let _ = writeln!(o, "# HELP weft_wireguard_peer_last_handshake_seconds Seconds since the current session's handshake, per peer (absent: no session)
# TYPE weft_wireguard_peer_last_handshake_seconds gauge");
    for p in &wg.peers {
        if let Some(secs) = p.last_handshake_secs {
            let _ = writeln!(
                o,
                "weft_wireguard_peer_last_handshake_seconds{{peer=\"{}\",subnet=\"{}\"}} {secs:.1}",
                p.public_key, p.subnet
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_workers_and_renders_prometheus_text() {
        let w1 = WorkerCounters::default();
        let w2 = WorkerCounters::default();
        w1.tx(100);
        w2.tx(50);
        w2.rx(7);
        w1.dropped(DropReason::BadVni);
        w2.dropped(DropReason::BadVni);
        w2.dropped(DropReason::SpoofedSource);
        w1.xdp_rx_frames.fetch_add(3, Ordering::Relaxed);
        w2.xdp_rx_frames.fetch_add(4, Ordering::Relaxed);
        let view = MetricsView {
            lease_held: true,
            dataplane: "userspace",
            underlay: "af_xdp (driver mode, copy, 2 of 2 workers)".into(),
            peers: 2,
            routes: 2,
            counters: CounterTotals::sum([&w1, &w2]),
            per_worker: CounterTotals::per_worker([&w1, &w2]),
            ..Default::default()
        };
        let text = render(&view);
        assert!(text.contains("weft_lease_held 1\n"));
        assert!(text.contains("weft_peers 2\n"));
        assert!(text.contains("weft_packets_total{direction=\"tx\"} 2\n"));
        assert!(text.contains("weft_bytes_total{direction=\"tx\"} 150\n"));
        assert!(text.contains("weft_worker_packets_total{worker=\"0\",direction=\"tx\"} 1\n"));
        assert!(text.contains("weft_worker_packets_total{worker=\"1\",direction=\"rx\"} 1\n"));
        assert!(text.contains("weft_drops_total{reason=\"bad_vni\"} 2\n"));
        assert!(text.contains("weft_drops_total{reason=\"spoofed_source\"} 1\n"));
        assert!(text.contains("weft_drops_total{reason=\"truncated\"} 0\n"));
        assert!(!text.contains("weft_lease_ttl_seconds"));
        assert!(text.contains(
            "weft_dataplane_info{kind=\"userspace\",underlay=\"af_xdp (driver mode, copy, 2 of 2 workers)\"} 1\n"
        ));
        assert!(text.contains("weft_xdp_frames_total{direction=\"rx\"} 7\n"));
        assert!(!render(&MetricsView::default()).contains("weft_dataplane_info"));
    }
}
