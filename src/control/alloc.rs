//! Subnet allocation with flannel's rules: reuse our lease, else the previous subnet, else a random free one.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use rand::seq::SliceRandom;

use crate::control::config::{Ipv6Config, NetworkConfig};

/// How many free subnets, counted from SubnetMin, the random pick chooses among (flannel's figure).
const RANDOM_POOL: usize = 100;

/// A lease already in etcd, as the allocator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingLease {
    pub subnet: Ipv4Net,
    /// The IPv6 half of a dual-stack lease's key.
    pub subnet6: Option<Ipv6Net>,
    pub public_ip: Ipv4Addr,
    /// A reservation: a key without an etcd lease (no TTL), which only the host with its PublicIP takes.
    pub reserved: bool,
}

/// What the allocator decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// A lease in etcd already carries our public IP: take it over.
    Reuse(Ipv4Net),
    /// The subnet from the previous subnet.env is free: claim it again.
    Previous(Ipv4Net),
    /// A free subnet picked at random.
    Fresh(Ipv4Net),
}

impl Choice {
    pub fn subnet(&self) -> Ipv4Net {
        match *self {
            Choice::Reuse(s) | Choice::Previous(s) | Choice::Fresh(s) => s,
        }
    }
}

/// The network has no free subnet left.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("network {network} is exhausted: all {count} /{subnet_len} subnets between {min} and {max} are leased; widen Network or SubnetMin/SubnetMax, or delete stale leases (weft leases)")]
pub struct Exhausted {
    pub network: Ipv4Net,
    pub subnet_len: u8,
    pub count: u64,
    pub min: Ipv4Addr,
    pub max: Ipv4Addr,
}

/// Picks the subnet for a host with public IP `me`, given the leases in etcd and the subnet of the
/// previous subnet.env, if any. The previous subnet wins while its lease is ours or free: dockerd's `--bip`
/// already uses it, so a stray lease elsewhere that carries our IP must not move the host.
pub fn choose_subnet(
    cfg: &NetworkConfig,
    existing: &[ExistingLease],
    me: Ipv4Addr,
    previous: Option<Ipv4Net>,
    rng: &mut impl rand::Rng,
) -> Result<Choice, Exhausted> {
    // A reservation for our public IP comes first, as in flannel: the operator chose that subnet for
    // this host.
    if let Some(l) = existing
        .iter()
        .find(|l| l.reserved && l.public_ip == me && cfg.fits(&l.subnet))
    {
        return Ok(Choice::Reuse(l.subnet));
    }
    if let Some(prev) = previous.filter(|p| cfg.fits(p)) {
        match existing.iter().find(|l| l.subnet == prev) {
            None => return Ok(Choice::Previous(prev)),
            Some(l) if l.public_ip == me => return Ok(Choice::Reuse(prev)),
            Some(_) => {}
        }
    }
    if let Some(l) = existing
        .iter()
        .find(|l| l.public_ip == me && cfg.fits(&l.subnet))
    {
        return Ok(Choice::Reuse(l.subnet));
    }
    let taken: HashSet<Ipv4Net> = existing.iter().map(|l| l.subnet).collect();
    let size = 1u64 << (32 - cfg.subnet_len);
    let mut free = Vec::with_capacity(RANDOM_POOL);
    let mut addr = u64::from(u32::from(cfg.subnet_min));
    let max = u64::from(u32::from(cfg.subnet_max));
    while addr <= max && free.len() < RANDOM_POOL {
        let net = Ipv4Net::new(Ipv4Addr::from(addr as u32), cfg.subnet_len)
            .expect("subnet_len was validated");
        if !taken.contains(&net) {
            free.push(net);
        }
        addr += size;
    }
    free.choose(rng)
        .map(|n| Choice::Fresh(*n))
        .ok_or(Exhausted {
            network: cfg.network,
            subnet_len: cfg.subnet_len,
            count: cfg.subnet_count(),
            min: cfg.subnet_min,
            max: cfg.subnet_max,
        })
}

/// The IPv6 half of a dual-stack network has no free subnet left.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("IPv6Network {network} is exhausted: all {count} /{subnet_len} subnets between {min} and {max} are leased; widen IPv6Network or IPv6SubnetMin/IPv6SubnetMax, or delete stale leases (weft leases)")]
pub struct Exhausted6 {
    pub network: Ipv6Net,
    pub subnet_len: u8,
    pub count: u64,
    pub min: Ipv6Addr,
    pub max: Ipv6Addr,
}

/// Picks the IPv6 subnet to lease with IPv4 subnet `v4` on a dual-stack network: the one our lease of `v4`
/// already has, else the previous subnet.env's if no other host holds it, else a random free one among the
/// first [`RANDOM_POOL`] from IPv6SubnetMin (flannel's rule). Both halves go into one key, written in one
/// transaction.
pub fn choose_subnet6(
    cfg: &Ipv6Config,
    existing: &[ExistingLease],
    me: Ipv4Addr,
    v4: Ipv4Net,
    previous: Option<Ipv6Net>,
    rng: &mut impl rand::Rng,
) -> Result<Ipv6Net, Exhausted6> {
    let taken_by_other = |n: &Ipv6Net| {
        existing
            .iter()
            .any(|l| l.subnet6 == Some(*n) && (l.public_ip != me || l.subnet != v4))
    };
    if let Some(mine) = existing
        .iter()
        .filter(|l| l.subnet == v4 && l.public_ip == me)
        .find_map(|l| l.subnet6.filter(|n| cfg.fits(n) && !taken_by_other(n)))
    {
        return Ok(mine);
    }
    if let Some(prev) = previous.filter(|p| cfg.fits(p) && !taken_by_other(p)) {
        return Ok(prev);
    }
    let taken: HashSet<Ipv6Net> = existing.iter().filter_map(|l| l.subnet6).collect();
    let size = 1u128 << (128 - u32::from(cfg.subnet_len));
    let mut free = Vec::with_capacity(RANDOM_POOL);
    let mut addr = u128::from(cfg.subnet_min);
    let max = u128::from(cfg.subnet_max);
    while addr <= max && free.len() < RANDOM_POOL {
        let net = Ipv6Net::new(Ipv6Addr::from(addr), cfg.subnet_len)
            .expect("IPv6SubnetLen was validated");
        if !taken.contains(&net) {
            free.push(net);
        }
        match addr.checked_add(size) {
            Some(next) => addr = next,
            None => break,
        }
    }
    free.choose(rng).copied().ok_or(Exhausted6 {
        network: cfg.network,
        subnet_len: cfg.subnet_len,
        count: cfg.subnet_count(),
        min: cfg.subnet_min,
        max: cfg.subnet_max,
    })
}

/// Leases other than `chosen` that carry our public IP `me`: left over, or another host claiming our address.
/// They are reported, never adopted or deleted.
pub fn also_ours(existing: &[ExistingLease], me: Ipv4Addr, chosen: Ipv4Net) -> Vec<Ipv4Net> {
    existing
        .iter()
        .filter(|l| l.public_ip == me && l.subnet != chosen)
        .map(|l| l.subnet)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn cfg(json: &str) -> NetworkConfig {
        NetworkConfig::parse(json).unwrap()
    }

    fn lease(s: &str, ip: [u8; 4]) -> ExistingLease {
        ExistingLease {
            subnet6: None,
            reserved: false,
            subnet: s.parse().unwrap(),
            public_ip: Ipv4Addr::from(ip),
        }
    }

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    #[test]
    fn the_ipv6_half_follows_our_lease_then_the_previous_then_a_free_one() {
        let c = cfg(r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:5::/48"}"#);
        let c6 = c.ipv6.unwrap();
        let me = Ipv4Addr::new(2, 2, 2, 2);
        let v4: Ipv4Net = "10.5.9.0/24".parse().unwrap();
        let n6 = |s: &str| -> Ipv6Net { s.parse().unwrap() };
        let mut ours = lease("10.5.9.0/24", [2, 2, 2, 2]);
        ours.subnet6 = Some(n6("fc00:5:0:7::/64"));
        let mut other = lease("10.5.3.0/24", [1, 1, 1, 1]);
        other.subnet6 = Some(n6("fc00:5:0:1::/64"));
        // Our lease's IPv6 subnet is kept.
        let ex = [ours.clone(), other.clone()];
        let got = choose_subnet6(&c6, &ex, me, v4, Some(n6("fc00:5:0:9::/64")), &mut rng());
        assert_eq!(got, Ok(n6("fc00:5:0:7::/64")));
        // No IPv6 half yet (the network just became dual-stack): the previous one, if free.
        let ex = [lease("10.5.9.0/24", [2, 2, 2, 2]), other.clone()];
        let got = choose_subnet6(&c6, &ex, me, v4, Some(n6("fc00:5:0:9::/64")), &mut rng());
        assert_eq!(got, Ok(n6("fc00:5:0:9::/64")));
        // The previous one is another host's now: a free one, never another host's.
        let got =
            choose_subnet6(&c6, &ex, me, v4, Some(n6("fc00:5:0:1::/64")), &mut rng()).unwrap();
        assert!(c6.fits(&got) && got != n6("fc00:5:0:1::/64"));
        // All taken.
        let tiny = cfg(r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/120"}"#);
        let t6 = tiny.ipv6.unwrap();
        let ex: Vec<ExistingLease> = ["fc00::40/122", "fc00::80/122", "fc00::c0/122"]
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut l = lease(&format!("10.5.{i}.0/24"), [1, 1, 1, 1]);
                l.subnet6 = Some(n6(s));
                l
            })
            .collect();
        let e = choose_subnet6(&t6, &ex, me, v4, None, &mut rng()).unwrap_err();
        assert!(
            e.to_string()
                .contains("IPv6Network fc00::/120 is exhausted"),
            "{e}"
        );
    }

    #[test]
    fn reuses_the_lease_carrying_our_ip() {
        let c = cfg(r#"{"Network":"10.5.0.0/16"}"#);
        let ex = [
            lease("10.5.3.0/24", [1, 1, 1, 1]),
            lease("10.5.9.0/24", [2, 2, 2, 2]),
        ];
        let got = choose_subnet(&c, &ex, Ipv4Addr::new(2, 2, 2, 2), None, &mut rng()).unwrap();
        assert_eq!(got, Choice::Reuse("10.5.9.0/24".parse().unwrap()));
    }

    #[test]
    fn ignores_our_lease_when_it_no_longer_fits_the_config() {
        let c = cfg(r#"{"Network":"10.5.0.0/16","SubnetLen":25}"#);
        let ex = [lease("10.5.9.0/24", [2, 2, 2, 2])];
        let got = choose_subnet(&c, &ex, Ipv4Addr::new(2, 2, 2, 2), None, &mut rng()).unwrap();
        assert!(matches!(got, Choice::Fresh(n) if n.prefix_len() == 25));
    }

    #[test]
    fn previous_subnet_if_free() {
        let c = cfg(r#"{"Network":"10.5.0.0/16"}"#);
        let prev = "10.5.77.0/24".parse().unwrap();
        let got =
            choose_subnet(&c, &[], Ipv4Addr::new(1, 1, 1, 1), Some(prev), &mut rng()).unwrap();
        assert_eq!(got, Choice::Previous(prev));
        let ex = [lease("10.5.77.0/24", [9, 9, 9, 9])];
        let got =
            choose_subnet(&c, &ex, Ipv4Addr::new(1, 1, 1, 1), Some(prev), &mut rng()).unwrap();
        assert!(matches!(got, Choice::Fresh(n) if n != prev));
    }

    #[test]
    fn previous_subnet_wins_over_another_lease_with_our_ip() {
        let c = cfg(r#"{"Network":"10.5.0.0/16"}"#);
        let me = Ipv4Addr::new(2, 2, 2, 2);
        let prev: Ipv4Net = "10.5.77.0/24".parse().unwrap();
        let stray = lease("10.5.9.0/24", [2, 2, 2, 2]);
        // Its lease still ours: reuse it (in place), whatever else carries our IP.
        let ex = [stray.clone(), lease("10.5.77.0/24", [2, 2, 2, 2])];
        let got = choose_subnet(&c, &ex, me, Some(prev), &mut rng()).unwrap();
        assert_eq!(got, Choice::Reuse(prev));
        assert_eq!(also_ours(&ex, me, prev), vec![stray.subnet]);
        // Its lease gone: claim it again rather than jump to the stray one.
        let ex = [stray.clone()];
        let got = choose_subnet(&c, &ex, me, Some(prev), &mut rng()).unwrap();
        assert_eq!(got, Choice::Previous(prev));
        // Taken by another host: then our IP's lease is the next best.
        let ex = [stray.clone(), lease("10.5.77.0/24", [9, 9, 9, 9])];
        let got = choose_subnet(&c, &ex, me, Some(prev), &mut rng()).unwrap();
        assert_eq!(got, Choice::Reuse(stray.subnet));
        assert!(also_ours(&ex, me, stray.subnet).is_empty());
    }

    #[test]
    fn fresh_is_free_aligned_and_in_range() {
        let c = cfg(r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.10.0","SubnetMax":"10.5.12.0"}"#);
        let ex = [
            lease("10.5.10.0/24", [9, 9, 9, 9]),
            lease("10.5.11.0/24", [8, 8, 8, 8]),
        ];
        for seed in 0..20 {
            let mut r = rand::rngs::StdRng::seed_from_u64(seed);
            let got = choose_subnet(&c, &ex, Ipv4Addr::new(1, 1, 1, 1), None, &mut r).unwrap();
            assert_eq!(got, Choice::Fresh("10.5.12.0/24".parse().unwrap()));
        }
    }

    #[test]
    fn never_picks_the_first_subnet_by_default() {
        let c = cfg(r#"{"Network":"10.5.0.0/24"}"#);
        let mut seen = HashSet::new();
        for seed in 0..50 {
            let mut r = rand::rngs::StdRng::seed_from_u64(seed);
            seen.insert(
                choose_subnet(&c, &[], Ipv4Addr::new(1, 1, 1, 1), None, &mut r)
                    .unwrap()
                    .subnet(),
            );
        }
        assert!(!seen.contains(&"10.5.0.0/26".parse().unwrap()));
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn exhausted_is_an_error_naming_the_network() {
        let c = cfg(r#"{"Network":"10.5.0.0/24"}"#);
        let ex = [
            lease("10.5.0.64/26", [1, 0, 0, 1]),
            lease("10.5.0.128/26", [1, 0, 0, 2]),
            lease("10.5.0.192/26", [1, 0, 0, 3]),
        ];
        let e = choose_subnet(&c, &ex, Ipv4Addr::new(1, 0, 0, 4), None, &mut rng()).unwrap_err();
        assert_eq!(e.count, 3);
        assert!(e.to_string().contains("10.5.0.0/24 is exhausted"));
    }
}
