//! Subnet allocation with flannel's rules: reuse our lease, else the previous subnet, else a random free one.

use std::collections::HashSet;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use rand::seq::SliceRandom;

use crate::control::config::{Ipv4Config, Ipv6Config};
use crate::control::lease::SubnetKey;

/// How many free subnets, counted from SubnetMin, the random pick chooses among (flannel's figure).
const RANDOM_POOL: usize = 100;

/// A lease already in etcd, as the allocator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingLease {
    /// The IPv4 half of its key (None on an IPv6-only network).
    pub subnet: Option<Ipv4Net>,
    /// The IPv6 half of a dual-stack or IPv6-only lease's key.
    pub subnet6: Option<Ipv6Net>,
    /// The host it names (`LeaseAttrs::owner`: PublicIP, or PublicIPv6 on an IPv6-only network).
    pub owner: IpAddr,
    /// A reservation: a key without an etcd lease (no TTL), which only the host with its PublicIP takes.
    pub reserved: bool,
}

impl ExistingLease {
    pub fn key(&self) -> SubnetKey {
        SubnetKey {
            v4: self.subnet,
            v6: self.subnet6,
        }
    }
}

/// What the allocator decided, for the subnet of the family that names the host (IPv4, or IPv6 on an
/// IPv6-only network).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice<N = Ipv4Net> {
    /// A lease in etcd already carries our public IP: take it over.
    Reuse(N),
    /// The subnet from the previous subnet.env is free: claim it again.
    Previous(N),
    /// A free subnet picked at random.
    Fresh(N),
}

impl<N: Copy> Choice<N> {
    pub fn subnet(&self) -> N {
        match *self {
            Choice::Reuse(s) | Choice::Previous(s) | Choice::Fresh(s) => s,
        }
    }

    /// The same decision about another form of the subnet.
    pub fn map<M>(self, f: impl FnOnce(N) -> M) -> Choice<M> {
        match self {
            Choice::Reuse(s) => Choice::Reuse(f(s)),
            Choice::Previous(s) => Choice::Previous(f(s)),
            Choice::Fresh(s) => Choice::Fresh(f(s)),
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

/// One address family's subnets, as the allocator walks them.
pub trait Family {
    type Net: Copy + Eq + Hash;
    type Exhausted;
    fn fits(&self, n: &Self::Net) -> bool;
    /// The subnets from SubnetMin up, in order (at most up to SubnetMax).
    fn subnets(&self) -> impl Iterator<Item = Self::Net>;
    /// The half of a lease's key in this family.
    fn half(l: &ExistingLease) -> Option<Self::Net>;
    fn exhausted(&self) -> Self::Exhausted;
}

impl Family for Ipv4Config {
    type Net = Ipv4Net;
    type Exhausted = Exhausted;
    fn fits(&self, n: &Ipv4Net) -> bool {
        Ipv4Config::fits(self, n)
    }
    fn subnets(&self) -> impl Iterator<Item = Ipv4Net> {
        let size = 1u64 << (32 - self.subnet_len);
        let (min, max) = (
            u64::from(u32::from(self.subnet_min)),
            u64::from(u32::from(self.subnet_max)),
        );
        let len = self.subnet_len;
        (0..)
            .map(move |i: u64| min + i * size)
            .take_while(move |a| *a <= max)
            .map(move |a| {
                Ipv4Net::new(Ipv4Addr::from(a as u32), len).expect("subnet_len was validated")
            })
    }
    fn half(l: &ExistingLease) -> Option<Ipv4Net> {
        l.subnet
    }
    fn exhausted(&self) -> Exhausted {
        Exhausted {
            network: self.network,
            subnet_len: self.subnet_len,
            count: self.subnet_count(),
            min: self.subnet_min,
            max: self.subnet_max,
        }
    }
}

impl Family for Ipv6Config {
    type Net = Ipv6Net;
    type Exhausted = Exhausted6;
    fn fits(&self, n: &Ipv6Net) -> bool {
        Ipv6Config::fits(self, n)
    }
    fn subnets(&self) -> impl Iterator<Item = Ipv6Net> {
        let size = 1u128 << (128 - u32::from(self.subnet_len));
        let (min, max) = (u128::from(self.subnet_min), u128::from(self.subnet_max));
        let len = self.subnet_len;
        std::iter::successors(Some(min), move |a| a.checked_add(size))
            .take_while(move |a| *a <= max)
            .map(move |a| {
                Ipv6Net::new(Ipv6Addr::from(a), len).expect("IPv6SubnetLen was validated")
            })
    }
    fn half(l: &ExistingLease) -> Option<Ipv6Net> {
        l.subnet6
    }
    fn exhausted(&self) -> Exhausted6 {
        Exhausted6 {
            network: self.network,
            subnet_len: self.subnet_len,
            count: self.subnet_count(),
            min: self.subnet_min,
            max: self.subnet_max,
        }
    }
}

/// Picks the subnet that names a host (IPv4, or IPv6 on an IPv6-only network) for the host `me`, given the
/// leases in etcd and the subnet of the previous subnet.env, if any. The previous subnet wins while its
/// lease is ours or free: dockerd's `--bip` already uses it, so a stray lease elsewhere that carries our IP
/// must not move the host.
pub fn choose_subnet<F: Family>(
    cfg: &F,
    existing: &[ExistingLease],
    me: IpAddr,
    previous: Option<F::Net>,
    rng: &mut impl rand::Rng,
) -> Result<Choice<F::Net>, F::Exhausted> {
    let ours = |l: &&ExistingLease| l.owner == me && F::half(l).is_some_and(|n| cfg.fits(&n));
    // A reservation for our public IP comes first, as in flannel: the operator chose that subnet for
    // this host.
    if let Some(n) = existing
        .iter()
        .filter(ours)
        .find(|l| l.reserved)
        .and_then(F::half)
    {
        return Ok(Choice::Reuse(n));
    }
    if let Some(prev) = previous.filter(|p| cfg.fits(p)) {
        match existing.iter().find(|l| F::half(l) == Some(prev)) {
            None => return Ok(Choice::Previous(prev)),
            Some(l) if l.owner == me => return Ok(Choice::Reuse(prev)),
            Some(_) => {}
        }
    }
    if let Some(n) = existing.iter().find(ours).and_then(F::half) {
        return Ok(Choice::Reuse(n));
    }
    let taken: HashSet<F::Net> = existing.iter().filter_map(F::half).collect();
    let free: Vec<F::Net> = cfg
        .subnets()
        .filter(|n| !taken.contains(n))
        .take(RANDOM_POOL)
        .collect();
    free.choose(rng)
        .map(|n| Choice::Fresh(*n))
        .ok_or_else(|| cfg.exhausted())
}

/// Picks the IPv6 subnet to lease with IPv4 subnet `v4` on a dual-stack network: the one our lease of `v4`
/// already has, else the previous subnet.env's if no other host holds it, else a random free one among the
/// first [`RANDOM_POOL`] from IPv6SubnetMin (flannel's rule). Before the random pick, `paired` (the IPv6
/// subnet at the IPv4 subnet's position in its range, see [`paired_subnet6`]) if it is free: two hosts that
/// start together and win distinct IPv4 subnets then never pick the same IPv6 one. Both halves go into one
/// key, written in one transaction.
pub fn choose_subnet6(
    cfg: &Ipv6Config,
    existing: &[ExistingLease],
    me: IpAddr,
    v4: Ipv4Net,
    previous: Option<Ipv6Net>,
    paired: Option<Ipv6Net>,
    rng: &mut impl rand::Rng,
) -> Result<Ipv6Net, Exhausted6> {
    let taken_by_other = |n: &Ipv6Net| {
        existing
            .iter()
            .any(|l| l.subnet6 == Some(*n) && (l.owner != me || l.subnet != Some(v4)))
    };
    if let Some(mine) = existing
        .iter()
        .filter(|l| l.subnet == Some(v4) && l.owner == me)
        .find_map(|l| l.subnet6.filter(|n| cfg.fits(n) && !taken_by_other(n)))
    {
        return Ok(mine);
    }
    if let Some(prev) = previous.filter(|p| cfg.fits(p) && !taken_by_other(p)) {
        return Ok(prev);
    }
    let taken: HashSet<Ipv6Net> = existing.iter().filter_map(|l| l.subnet6).collect();
    if let Some(p) = paired.filter(|p| cfg.fits(p) && !taken.contains(p)) {
        return Ok(p);
    }
    let free: Vec<Ipv6Net> = cfg
        .subnets()
        .filter(|n| !taken.contains(n))
        .take(RANDOM_POOL)
        .collect();
    free.choose(rng).copied().ok_or_else(|| cfg.exhausted())
}

/// The IPv6 subnet whose position in IPv6SubnetMin..=IPv6SubnetMax is the IPv4 subnet `v4`'s position in
/// SubnetMin..=SubnetMax, if there is one: a one-to-one pairing, so distinct IPv4 subnets pair distinct
/// IPv6 ones.
pub fn paired_subnet6(c4: &Ipv4Config, c6: &Ipv6Config, v4: Ipv4Net) -> Option<Ipv6Net> {
    let i = u128::from(u32::from(v4.network()).checked_sub(u32::from(c4.subnet_min))?)
        >> (32 - u32::from(c4.subnet_len));
    let size6 = 1u128 << (128 - u32::from(c6.subnet_len));
    let addr = u128::from(c6.subnet_min).checked_add(i.checked_mul(size6)?)?;
    (addr <= u128::from(c6.subnet_max))
        .then(|| Ipv6Net::new(Ipv6Addr::from(addr), c6.subnet_len).ok())?
}

/// Leases other than `chosen` that carry our public IP `me`: left over, or another host claiming our address.
/// They are reported, never adopted or deleted.
pub fn also_ours(existing: &[ExistingLease], me: IpAddr, chosen: SubnetKey) -> Vec<SubnetKey> {
    existing
        .iter()
        .filter(|l| l.owner == me && !l.key().shares_a_subnet(&chosen))
        .map(ExistingLease::key)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::config::NetworkConfig;
    use rand::SeedableRng;

    fn cfg(json: &str) -> Ipv4Config {
        NetworkConfig::parse(json).unwrap().ipv4.unwrap()
    }

    fn cfg6(json: &str) -> Ipv6Config {
        NetworkConfig::parse(json).unwrap().ipv6.unwrap()
    }

    fn lease(s: &str, ip: [u8; 4]) -> ExistingLease {
        ExistingLease {
            subnet6: None,
            reserved: false,
            subnet: Some(s.parse().unwrap()),
            owner: Ipv4Addr::from(ip).into(),
        }
    }

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    #[test]
    fn the_ipv6_half_follows_our_lease_then_the_previous_then_a_free_one() {
        let c6 = cfg6(r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:5::/48"}"#);
        let me = IpAddr::from([2, 2, 2, 2]);
        let v4: Ipv4Net = "10.5.9.0/24".parse().unwrap();
        let n6 = |s: &str| -> Ipv6Net { s.parse().unwrap() };
        let mut ours = lease("10.5.9.0/24", [2, 2, 2, 2]);
        ours.subnet6 = Some(n6("fc00:5:0:7::/64"));
        let mut other = lease("10.5.3.0/24", [1, 1, 1, 1]);
        other.subnet6 = Some(n6("fc00:5:0:1::/64"));
        // Picks with previous subnet.env `prev` and no paired subnet.
        let pick = |ex: &[ExistingLease], prev: &str| {
            choose_subnet6(&c6, ex, me, v4, Some(n6(prev)), None, &mut rng())
        };
        // Our lease's IPv6 subnet is kept.
        let ex = [ours.clone(), other.clone()];
        let got = pick(&ex, "fc00:5:0:9::/64");
        assert_eq!(got, Ok(n6("fc00:5:0:7::/64")));
        // No IPv6 half yet (the network just became dual-stack): the previous one, if free.
        let ex = [lease("10.5.9.0/24", [2, 2, 2, 2]), other.clone()];
        let got = pick(&ex, "fc00:5:0:9::/64");
        assert_eq!(got, Ok(n6("fc00:5:0:9::/64")));
        // The previous one is another host's now: a free one, never another host's.
        let got = pick(&ex, "fc00:5:0:1::/64").unwrap();
        assert!(c6.fits(&got) && got != n6("fc00:5:0:1::/64"));
        // All taken.
        let t6 = cfg6(r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/120"}"#);
        let ex: Vec<ExistingLease> = ["fc00::40/122", "fc00::80/122", "fc00::c0/122"]
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut l = lease(&format!("10.5.{i}.0/24"), [1, 1, 1, 1]);
                l.subnet6 = Some(n6(s));
                l
            })
            .collect();
        let e = choose_subnet6(&t6, &ex, me, v4, None, None, &mut rng()).unwrap_err();
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
        let got = choose_subnet(&c, &ex, IpAddr::from([2, 2, 2, 2]), None, &mut rng()).unwrap();
        assert_eq!(got, Choice::Reuse("10.5.9.0/24".parse().unwrap()));
    }

    #[test]
    fn ignores_our_lease_when_it_no_longer_fits_the_config() {
        let c = cfg(r#"{"Network":"10.5.0.0/16","SubnetLen":25}"#);
        let ex = [lease("10.5.9.0/24", [2, 2, 2, 2])];
        let got = choose_subnet(&c, &ex, IpAddr::from([2, 2, 2, 2]), None, &mut rng()).unwrap();
        assert!(matches!(got, Choice::Fresh(n) if n.prefix_len() == 25));
    }

    #[test]
    fn previous_subnet_if_free() {
        let c = cfg(r#"{"Network":"10.5.0.0/16"}"#);
        let prev = "10.5.77.0/24".parse().unwrap();
        let got =
            choose_subnet(&c, &[], IpAddr::from([1, 1, 1, 1]), Some(prev), &mut rng()).unwrap();
        assert_eq!(got, Choice::Previous(prev));
        let ex = [lease("10.5.77.0/24", [9, 9, 9, 9])];
        let got =
            choose_subnet(&c, &ex, IpAddr::from([1, 1, 1, 1]), Some(prev), &mut rng()).unwrap();
        assert!(matches!(got, Choice::Fresh(n) if n != prev));
    }

    #[test]
    fn previous_subnet_wins_over_another_lease_with_our_ip() {
        let c = cfg(r#"{"Network":"10.5.0.0/16"}"#);
        let me = IpAddr::from([2, 2, 2, 2]);
        let prev: Ipv4Net = "10.5.77.0/24".parse().unwrap();
        let stray = lease("10.5.9.0/24", [2, 2, 2, 2]);
        // Its lease still ours: reuse it (in place), whatever else carries our IP.
        let ex = [stray.clone(), lease("10.5.77.0/24", [2, 2, 2, 2])];
        let got = choose_subnet(&c, &ex, me, Some(prev), &mut rng()).unwrap();
        assert_eq!(got, Choice::Reuse(prev));
        assert_eq!(also_ours(&ex, me, SubnetKey::v4(prev)), vec![stray.key()]);
        // Its lease gone: claim it again rather than jump to the stray one.
        let ex = [stray.clone()];
        let got = choose_subnet(&c, &ex, me, Some(prev), &mut rng()).unwrap();
        assert_eq!(got, Choice::Previous(prev));
        // Taken by another host: then our IP's lease is the next best.
        let ex = [stray.clone(), lease("10.5.77.0/24", [9, 9, 9, 9])];
        let got = choose_subnet(&c, &ex, me, Some(prev), &mut rng()).unwrap();
        assert_eq!(got, Choice::Reuse(stray.subnet.unwrap()));
        assert!(also_ours(&ex, me, stray.key()).is_empty());
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
            let got = choose_subnet(&c, &ex, IpAddr::from([1, 1, 1, 1]), None, &mut r).unwrap();
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
                choose_subnet(&c, &[], IpAddr::from([1, 1, 1, 1]), None, &mut r)
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
        let e = choose_subnet(&c, &ex, IpAddr::from([1, 0, 0, 4]), None, &mut rng()).unwrap_err();
        assert_eq!(e.count, 3);
        assert!(e.to_string().contains("10.5.0.0/24 is exhausted"));
    }

    #[test]
    fn an_ipv6_only_network_names_hosts_by_their_ipv6_address() {
        let c6 = cfg6(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00:5::/48"}"#);
        let n6 = |s: &str| -> Ipv6Net { s.parse().unwrap() };
        let v6 = |s: &str, owner: &str, reserved| ExistingLease {
            subnet: None,
            subnet6: Some(n6(s)),
            owner: owner.parse().unwrap(),
            reserved,
        };
        let me: IpAddr = "fd00::2".parse().unwrap();
        let ex = [
            v6("fc00:5:0:3::/64", "fd00::1", false),
            v6("fc00:5:0:9::/64", "fd00::2", false),
        ];
        let got = choose_subnet(&c6, &ex, me, None, &mut rng()).unwrap();
        assert_eq!(got, Choice::Reuse(n6("fc00:5:0:9::/64")));
        // The previous subnet.env's subnet, if free; never another host's.
        let ex = [v6("fc00:5:0:3::/64", "fd00::1", false)];
        let got = choose_subnet(&c6, &ex, me, Some(n6("fc00:5:0:7::/64")), &mut rng()).unwrap();
        assert_eq!(got, Choice::Previous(n6("fc00:5:0:7::/64")));
        let got = choose_subnet(&c6, &ex, me, Some(n6("fc00:5:0:3::/64")), &mut rng()).unwrap();
        assert!(matches!(got, Choice::Fresh(n) if c6.fits(&n) && n != n6("fc00:5:0:3::/64")));
        // A reservation for our address first.
        let ex = [
            v6("fc00:5:0:3::/64", "fd00::1", false),
            v6("fc00:5:0:4::/64", "fd00::2", true),
        ];
        let got = choose_subnet(&c6, &ex, me, Some(n6("fc00:5:0:7::/64")), &mut rng()).unwrap();
        assert_eq!(got, Choice::Reuse(n6("fc00:5:0:4::/64")));
        // An IPv4 owner of the same subnet is not us.
        let mut foreign = v6("fc00:5:0:5::/64", "fd00::2", false);
        foreign.owner = IpAddr::from([2, 2, 2, 2]);
        let got = choose_subnet(&c6, &[foreign], me, None, &mut rng()).unwrap();
        assert!(matches!(got, Choice::Fresh(_)));
        // Exhaustion names the IPv6 network.
        let t6 = cfg6(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/120"}"#);
        let ex: Vec<ExistingLease> = ["fc00::40/122", "fc00::80/122", "fc00::c0/122"]
            .iter()
            .map(|s| v6(s, "fd00::1", false))
            .collect();
        let e = choose_subnet(&t6, &ex, me, None, &mut rng()).unwrap_err();
        assert!(
            e.to_string()
                .contains("IPv6Network fc00::/120 is exhausted"),
            "{e}"
        );
    }

    #[test]
    fn the_paired_ipv6_subnet_follows_the_ipv4_position_one_to_one() {
        let c = NetworkConfig::parse(
            r#"{"Network":"10.5.0.0/22","SubnetLen":26,"EnableIPv6":true,"IPv6Network":"fc00:5::/60"}"#,
        )
        .unwrap();
        let (c4, c6) = (c.ipv4.unwrap(), c.ipv6.unwrap());
        let p = |s: &str| paired_subnet6(&c4, &c6, s.parse().unwrap()).map(|n| n.to_string());
        // SubnetMin pairs IPv6SubnetMin, and so on.
        assert_eq!(p("10.5.0.64/26").as_deref(), Some("fc00:5:0:1::/64"));
        assert_eq!(p("10.5.0.128/26").as_deref(), Some("fc00:5:0:2::/64"));
        assert_eq!(p("10.5.3.192/26").as_deref(), Some("fc00:5:0:f::/64"));
        // Outside the IPv4 range, or past the IPv6 one: no pairing.
        assert_eq!(p("10.5.0.0/26"), None);
        let small6 = NetworkConfig::parse(
            r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:5::/62"}"#,
        )
        .unwrap();
        let (c4, c6) = (small6.ipv4.unwrap(), small6.ipv6.unwrap());
        assert!(paired_subnet6(&c4, &c6, "10.5.200.0/24".parse().unwrap()).is_none());
        // The pick takes the pair when it is free, else another free one.
        let me = IpAddr::from([2, 2, 2, 2]);
        let v4: Ipv4Net = "10.5.0.128/26".parse().unwrap();
        let paired = paired_subnet6(&c.ipv4.unwrap(), &c.ipv6.unwrap(), v4);
        let got = choose_subnet6(&c.ipv6.unwrap(), &[], me, v4, None, paired, &mut rng());
        assert_eq!(got.unwrap().to_string(), "fc00:5:0:2::/64");
        let mut other = lease("10.5.1.0/26", [1, 1, 1, 1]);
        other.subnet6 = paired;
        let got = choose_subnet6(&c.ipv6.unwrap(), &[other], me, v4, None, paired, &mut rng());
        assert_ne!(got.unwrap(), paired.unwrap());
    }
}
