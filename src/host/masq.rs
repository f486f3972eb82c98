//! `--ip-masq` and `--iptables-forward-rules`: flannel's masquerade and forward rules (computed purely),
//! installed idempotently through the `iptables` crate (which drives the iptables tools; ip6tables for
//! the IPv6 half of a dual-stack network), re-checked every `--iptables-resync` seconds, removed on clean
//! exit.

use std::time::Duration;

use ipnet::IpNet;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// weft's own chains, so its rules are found and removed as a unit.
pub const NAT_CHAIN: &str = "WEFT-POSTRTG";
pub const FWD_CHAIN: &str = "WEFT-FWD";
/// How often the rules are checked and put back if something removed them (flannel's --iptables-resync
/// default).
pub const RESYNC: Duration = Duration::from_secs(5);

/// Which of flannel's rules a host wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleSet {
    /// `--ip-masq`: masquerade containers' traffic leaving the overlay.
    pub masq: bool,
    /// `--iptables-forward-rules` (flannel's default: on): FORWARD accepts the Network.
    pub forward: bool,
    /// MASQUERADE with `--random-fully` (off with `--ip-masq-fully-random-disable`).
    pub random_fully: bool,
}

/// One iptables rule: table, chain, rule specification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// An ip6tables rule (the IPv6 half of a dual-stack network).
    pub v6: bool,
    pub table: &'static str,
    pub chain: &'static str,
    pub spec: String,
}

/// flannel's rules for this host: with `masq`, containers' traffic to the outside is masqueraded and
/// traffic between containers across the overlay keeps its source address; with `forward`, FORWARD accepts
/// the Network. Jumps into weft's chains come first in the list, so install in reverse to add chain rules
/// first.
pub fn rules(network: IpNet, subnet: IpNet, set: RuleSet) -> Vec<Rule> {
    let v6 = matches!(network, IpNet::V6(_));
    let rule = |table: &'static str, chain: &'static str, spec: String| Rule {
        v6,
        table,
        chain,
        spec,
    };
    let multicast = if v6 { "ff00::/8" } else { "224.0.0.0/4" };
    let (n, s) = (network.to_string(), subnet.to_string());
    let random = if set.random_fully {
        " --random-fully"
    } else {
        ""
    };
    let mut v = Vec::new();
    if set.masq {
        v.push(rule(
            "nat",
            "POSTROUTING",
            format!("-m comment --comment weft-masq -j {NAT_CHAIN}"),
        ));
    }
    if set.forward {
        v.push(rule(
            "filter",
            "FORWARD",
            format!("-m comment --comment weft-forward -j {FWD_CHAIN}"),
        ));
    }
    if set.masq {
        v.extend([
            // Traffic already marked for masquerade by kube-proxy-style setups is left alone.
            rule(
                "nat",
                NAT_CHAIN,
                "-m mark --mark 0x4000/0x4000 -j RETURN".into(),
            ),
            // Within the overlay: keep source addresses.
            rule("nat", NAT_CHAIN, format!("-s {s} -d {n} -j RETURN")),
            rule("nat", NAT_CHAIN, format!("-s {n} -d {s} -j RETURN")),
            // From outside the overlay to our containers: not ours to rewrite.
            rule("nat", NAT_CHAIN, format!("! -s {n} -d {s} -j RETURN")),
            // From the overlay to the outside world (but not multicast): masquerade.
            rule(
                "nat",
                NAT_CHAIN,
                format!("-s {n} ! -d {multicast} -j MASQUERADE{random}"),
            ),
            // From the outside into the overlay, via this host: masquerade so replies come back here.
            rule(
                "nat",
                NAT_CHAIN,
                format!("! -s {n} -d {n} -j MASQUERADE{random}"),
            ),
        ]);
    }
    if set.forward {
        v.push(rule("filter", FWD_CHAIN, format!("-s {n} -j ACCEPT")));
        v.push(rule("filter", FWD_CHAIN, format!("-d {n} -j ACCEPT")));
    }
    v
}

/// Why the `--ip-masq` rules could not be checked, installed or removed.
#[derive(Debug, thiserror::Error)]
pub enum MasqError {
    #[error("cannot run iptables: {0}; install the iptables package")]
    NoIptables(String),
    /// The iptables crate's errors are `Box<dyn Error>` (not `Send`), so they travel as text.
    #[error("{op}: {reason}")]
    Iptables { op: String, reason: String },
    #[error("the iptables task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Names the iptables operation that failed.
fn op<E: std::fmt::Display>(op: impl Into<String>) -> impl FnOnce(E) -> MasqError {
    let op = op.into();
    move |e| MasqError::Iptables {
        op,
        reason: e.to_string(),
    }
}

/// The iptables (or, `v6`, ip6tables) driver, numeric (listing a chain must never wait on reverse DNS).
fn open(v6: bool) -> Result<iptables::IPTables, MasqError> {
    let mut ipt = iptables::new(v6).map_err(|e| MasqError::NoIptables(e.to_string()))?;
    ipt.set_numeric(true);
    Ok(ipt)
}

/// Makes sure every rule exists (creating weft's chains first); returns how many were added.
/// Docker's chain for the operator's own FORWARD rules, run before Docker's: Docker 28 and later drop
/// traffic from other interfaces to its bridges' unpublished ports in its own chains (moby/moby#48724),
/// so the overlay's ACCEPT must come first, here. Docker creates it (weft never does) and never rewrites it.
pub const DOCKER_USER: &str = "DOCKER-USER";

/// The jump from DOCKER-USER into weft's forward chain.
fn docker_user_jump() -> String {
    format!("-m comment --comment weft-forward -j {FWD_CHAIN}")
}

/// weft's chains that `rules` use.
fn chains(rules: &[Rule]) -> Vec<(&'static str, &'static str)> {
    [("nat", NAT_CHAIN), ("filter", FWD_CHAIN)]
        .into_iter()
        .filter(|(t, c)| {
            rules
                .iter()
                .any(|r| (r.table == *t && r.chain == *c) || r.spec.ends_with(&format!("-j {c}")))
        })
        .collect()
}

/// Makes sure every rule of both families exists; returns how many were added.
fn ensure(rules: &[Rule]) -> Result<usize, MasqError> {
    let mut added = 0;
    for v6 in [false, true] {
        let family: Vec<Rule> = rules.iter().filter(|r| r.v6 == v6).cloned().collect();
        if !family.is_empty() {
            added += ensure_family(v6, &family)?;
        }
    }
    Ok(added)
}

/// Removes the rules of both families.
fn remove(rules: &[Rule]) -> Result<(), MasqError> {
    for v6 in [false, true] {
        let family: Vec<Rule> = rules.iter().filter(|r| r.v6 == v6).cloned().collect();
        if !family.is_empty() {
            remove_family(v6, &family)?;
        }
    }
    Ok(())
}

fn ensure_family(v6: bool, rules: &[Rule]) -> Result<usize, MasqError> {
    let ipt = open(v6)?;
    for (table, chain) in chains(rules) {
        if !ipt
            .chain_exists(table, chain)
            .map_err(op(format!("looking for {table}/{chain}")))?
        {
            ipt.new_chain(table, chain)
                .map_err(op(format!("creating {table}/{chain}")))?;
        }
    }
    let mut added = 0;
    // weft's chains must hold their rules in order (a RETURN after the MASQUERADE it should pre-empt is
    // useless): if any is missing, rebuild the chain.
    for (table, chain) in chains(rules) {
        let body: Vec<&Rule> = rules
            .iter()
            .filter(|r| r.table == table && r.chain == chain)
            .collect();
        let mut complete = true;
        for r in &body {
            complete &= ipt
                .exists(table, chain, &r.spec)
                .map_err(op(format!("checking `{}` in {table}/{chain}", r.spec)))?;
        }
        if !complete {
            ipt.flush_chain(table, chain)
                .map_err(op(format!("flushing {table}/{chain}")))?;
            for r in &body {
                ipt.append(table, chain, &r.spec)
                    .map_err(op(format!("adding `{}` to {table}/{chain}", r.spec)))?;
            }
            added += body.len();
        }
    }
    // With Docker's DOCKER-USER chain there (dockerd may start after weft: checked on every resync), the
    // overlay's ACCEPT goes first in it too.
    if chains(rules).contains(&("filter", FWD_CHAIN))
        && ipt
            .chain_exists("filter", DOCKER_USER)
            .map_err(op(format!("looking for filter/{DOCKER_USER}")))?
        && !ipt
            .exists("filter", DOCKER_USER, &docker_user_jump())
            .map_err(op(format!("checking the jump in filter/{DOCKER_USER}")))?
    {
        ipt.insert("filter", DOCKER_USER, &docker_user_jump(), 1)
            .map_err(op(format!("adding the jump to filter/{DOCKER_USER}")))?;
        added += 1;
    }
    // Then the jumps into them.
    for r in rules
        .iter()
        .filter(|r| r.chain == "POSTROUTING" || r.chain == "FORWARD")
    {
        if !ipt.exists(r.table, r.chain, &r.spec).map_err(op(format!(
            "checking `{}` in {}/{}",
            r.spec, r.table, r.chain
        )))? {
            ipt.append(r.table, r.chain, &r.spec).map_err(op(format!(
                "adding `{}` to {}/{}",
                r.spec, r.table, r.chain
            )))?;
            added += 1;
        }
    }
    Ok(added)
}

/// Removes the jumps and weft's chains of one family.
fn remove_family(v6: bool, rules: &[Rule]) -> Result<(), MasqError> {
    let ipt = open(v6)?;
    if chains(rules).contains(&("filter", FWD_CHAIN))
        && ipt.chain_exists("filter", DOCKER_USER).unwrap_or(false)
        && ipt
            .exists("filter", DOCKER_USER, &docker_user_jump())
            .unwrap_or(false)
    {
        ipt.delete("filter", DOCKER_USER, &docker_user_jump())
            .map_err(op(format!("deleting the jump from filter/{DOCKER_USER}")))?;
    }
    for r in rules
        .iter()
        .filter(|r| r.chain == "POSTROUTING" || r.chain == "FORWARD")
    {
        if ipt.exists(r.table, r.chain, &r.spec).unwrap_or(false) {
            ipt.delete(r.table, r.chain, &r.spec).map_err(op(format!(
                "deleting `{}` from {}/{}",
                r.spec, r.table, r.chain
            )))?;
        }
    }
    for (table, chain) in chains(rules) {
        if ipt.chain_exists(table, chain).unwrap_or(false) {
            ipt.flush_chain(table, chain)
                .map_err(op(format!("flushing {table}/{chain}")))?;
            ipt.delete_chain(table, chain)
                .map_err(op(format!("deleting {table}/{chain}")))?;
        }
    }
    Ok(())
}

/// The running rule keeper.
pub struct Masquerade {
    rules: Vec<Rule>,
    task: JoinHandle<()>,
}

impl Masquerade {
    /// Installs the rules now and keeps re-checking them every `resync`. An error now is fatal when
    /// masquerading was asked for; the forward rules alone (flannel's default) are only warned about and
    /// retried, so a host without iptables still forwards where FORWARD accepts.
    /// `nets`: (Network, our subnet) of each family the network has (IPv4, and IPv6 when dual-stack).
    pub async fn start(
        nets: &[(IpNet, IpNet)],
        set: RuleSet,
        resync: Duration,
    ) -> Result<Masquerade, MasqError> {
        let network = nets
            .iter()
            .map(|(n, _)| n.to_string())
            .collect::<Vec<_>>()
            .join(" + ");
        let rules: Vec<Rule> = nets.iter().flat_map(|&(n, s)| rules(n, s, set)).collect();
        // What an earlier run with other flags (or one that crashed) left of the parts not wanted now.
        let all = RuleSet {
            masq: true,
            forward: true,
            random_fully: set.random_fully,
        };
        let unwanted: Vec<Rule> = nets
            .iter()
            .flat_map(|&(n, s)| self::rules(n, s, all))
            .filter(|r| {
                let kept: Vec<Rule> = rules.iter().filter(|k| k.v6 == r.v6).cloned().collect();
                !chains(&kept)
                    .iter()
                    .any(|(_, c)| r.chain == *c || r.spec.ends_with(&format!("-j {c}")))
            })
            .collect();
        if !unwanted.is_empty() {
            let _ = tokio::task::spawn_blocking(move || remove(&unwanted)).await;
        }
        let r = rules.clone();
        let mut last_err: Option<String> = None;
        match tokio::task::spawn_blocking(move || ensure(&r)).await? {
            Ok(_) => {
                info!(%network, masq = set.masq, forward = set.forward, "iptables rules installed")
            }
            Err(e) if set.masq => return Err(e),
            Err(e) => {
                warn!("cannot install the FORWARD accept rules for {network} ({e}); if this host's FORWARD chain drops, containers on other hosts cannot reach ours. Retrying; --iptables-forward-rules=false turns this off");
                last_err = Some(e.to_string());
            }
        }
        let r = rules.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(resync).await;
                let r2 = r.clone();
                match tokio::task::spawn_blocking(move || ensure(&r2)).await {
                    Ok(Ok(0)) => last_err = None,
                    Ok(Ok(n)) => info!(
                        restored = n,
                        "iptables rules had been removed; put them back"
                    ),
                    Ok(Err(e)) => {
                        let e = e.to_string();
                        if last_err.as_deref() != Some(e.as_str()) {
                            warn!("cannot check the iptables rules: {e}; retrying");
                            last_err = Some(e);
                        }
                    }
                    Err(e) => warn!("iptables check failed: {e}"),
                }
            }
        });
        Ok(Masquerade { rules, task })
    }

    /// Stops re-checking and removes the rules.
    pub async fn stop(self) {
        self.task.abort();
        let rules = self.rules;
        match tokio::task::spawn_blocking(move || remove(&rules)).await {
            Ok(Ok(())) => info!("iptables rules removed"),
            Ok(Err(e)) => warn!("cannot remove the iptables rules: {e}"),
            Err(e) => warn!("cannot remove the iptables rules: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flannels_rules_for_a_host() {
        let all = RuleSet {
            masq: true,
            forward: true,
            random_fully: true,
        };
        let r = rules(
            "10.5.0.0/16".parse().unwrap(),
            "10.5.7.0/24".parse().unwrap(),
            all,
        );
        assert!(r.iter().all(|r| !r.v6));
        // The IPv6 half: the same rules for ip6tables, multicast being ff00::/8.
        let r6 = rules(
            "fc00:5::/48".parse().unwrap(),
            "fc00:5:0:7::/64".parse().unwrap(),
            all,
        );
        assert!(r6.iter().all(|r| r.v6) && r6.len() == r.len());
        assert!(r6
            .iter()
            .any(|r| r.spec == "-s fc00:5::/48 ! -d ff00::/8 -j MASQUERADE --random-fully"));
        let specs: Vec<String> = r
            .iter()
            .map(|r| format!("{} {} {}", r.table, r.chain, r.spec))
            .collect();
        assert!(
            specs.contains(&"nat WEFT-POSTRTG -s 10.5.7.0/24 -d 10.5.0.0/16 -j RETURN".to_string())
        );
        assert!(specs.contains(
            &"nat WEFT-POSTRTG -s 10.5.0.0/16 ! -d 224.0.0.0/4 -j MASQUERADE --random-fully"
                .to_string()
        ));
        assert!(specs.contains(&"filter WEFT-FWD -d 10.5.0.0/16 -j ACCEPT".to_string()));
        // The overlay RETURNs come before the MASQUERADE that would otherwise catch them.
        let ret = specs
            .iter()
            .position(|s| s.ends_with("-d 10.5.0.0/16 -j RETURN"))
            .unwrap();
        let masq = specs.iter().position(|s| s.contains("MASQUERADE")).unwrap();
        assert!(ret < masq);
        assert_eq!(
            r.iter()
                .filter(|r| r.chain == "POSTROUTING" || r.chain == "FORWARD")
                .count(),
            2
        );
        // Each part on its own, and MASQUERADE without --random-fully when it is turned off.
        let only = |set: RuleSet| {
            rules(
                "10.5.0.0/16".parse().unwrap(),
                "10.5.7.0/24".parse().unwrap(),
                set,
            )
        };
        let fwd = only(RuleSet { masq: false, ..all });
        assert!(fwd.iter().all(|r| r.table == "filter") && fwd.len() == 3);
        let masq = only(RuleSet {
            forward: false,
            random_fully: false,
            ..all
        });
        assert!(masq.iter().all(|r| r.table == "nat"));
        assert!(masq
            .iter()
            .any(|r| r.spec.ends_with("-j MASQUERADE") && !r.spec.contains("random")));
    }
}
