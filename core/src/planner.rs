//! Choosing the node each shard is snapshotted from (docs/design.md §5), with the reason for every node.
//!
//! Pure: the input is the leader's fleet view (`topology::ShardView`) and a policy's rules, the
//! output a ranked list of candidates and the nodes passed over, each with its reason, which
//! `fleetsnap backup show` prints and the window records. A shard with no acceptable node fails
//! alone, with the reasons; the planner never picks a node it has a reason against.

use serde::{Deserialize, Serialize};

use crate::report::Role;
use crate::topology::{NodeView, ShardView};

/// Whether a shard's primary may be the snapshot's source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllowPrimary {
    /// Never: a shard whose replicas all fail the checks fails.
    Never,
    /// Only when no replica qualifies, or as the last candidate after every replica (a window
    /// whose replicas all fail mid-way falls back to it).
    #[default]
    Fallback,
    /// Like any replica: ranked by lag (zero), after replicas with no lag.
    Always,
}

/// The rules a policy gives the planner.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rules {
    /// Whether the primary may be used.
    pub allow_primary: AllowPrimary,
    /// Zones to prefer, best first; among nodes equally fresh, one in an earlier zone wins.
    pub preferred_zones: Vec<String>,
    /// A node whose agent has not reported for longer is not a candidate.
    pub max_report_age_ms: u64,
    /// The share of a node's `used_memory` its host must have available for the fork's
    /// copy-on-write (0.5: half the dataset may be rewritten while the fork runs).
    pub cow_headroom: f64,
    /// Whether the source needs SYNC/PSYNC (the `replication` source does; `bgsave-file` not).
    pub needs_sync: bool,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            allow_primary: AllowPrimary::Fallback,
            preferred_zones: Vec::new(),
            max_report_age_ms: 3000,
            cow_headroom: 0.5,
            needs_sync: true,
        }
    }
}

/// One node's place in a plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeChoice {
    /// The node's name in its agent's config.
    pub name: String,
    /// `host:port`.
    pub address: String,
    /// The agent that watches it (and would take the job).
    pub agent: String,
    /// Its role.
    pub role: Role,
    /// Bytes behind the primary (0 for the primary).
    pub lag_bytes: Option<u64>,
    /// Its zone ("" when not said).
    pub zone: String,
    /// Rank among candidates (1 = chosen); `None` when passed over.
    pub rank: Option<u32>,
    /// Why it ranks where it does, or why it was passed over.
    pub reason: String,
}

/// The plan for one shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPlan {
    /// The shard's id in the fleet view.
    pub shard: String,
    /// Its slot ranges (cluster mode).
    pub slots: Vec<(u16, u16)>,
    /// Its replication id when the plan was made: a window restarts the shard if it changes.
    pub replid: String,
    /// The primary's replication offset when the plan was made.
    pub primary_offset: Option<u64>,
    /// Candidates in rank order, then the nodes passed over.
    pub nodes: Vec<NodeChoice>,
    /// Why the shard has no source, when it has none.
    pub failure: Option<String>,
}

impl ShardPlan {
    /// The chosen node.
    pub fn chosen(&self) -> Option<&NodeChoice> {
        self.nodes.iter().find(|n| n.rank == Some(1))
    }

    /// Candidates in rank order: the chosen one, then the ones a window falls back to.
    pub fn candidates(&self) -> impl Iterator<Item = &NodeChoice> {
        self.nodes.iter().filter(|n| n.rank.is_some())
    }
}

/// Why a node cannot be the source, if it cannot.
fn disqualified(n: &NodeView, rules: &Rules) -> Option<String> {
    if n.report_age_ms > rules.max_report_age_ms {
        return Some(format!(
            "its agent {:?} last reported {:.1} s ago (limit {:.1} s)",
            n.agent,
            n.report_age_ms as f64 / 1000.0,
            rules.max_report_age_ms as f64 / 1000.0
        ));
    }
    if !n.reachable {
        return Some(format!(
            "its agent cannot reach it: {}",
            n.error.as_deref().unwrap_or("no answer")
        ));
    }
    match n.persistence.as_str() {
        "loading" => return Some("it is loading its dataset".into()),
        "bgsave" => return Some("a fork is already running on it (BGSAVE)".into()),
        "aof-rewrite" => return Some("a fork is already running on it (AOF rewrite)".into()),
        _ => {}
    }
    if n.role == Role::Replica && n.link.as_deref() != Some("up") {
        return Some("its link to the primary is down".into());
    }
    if n.role == Role::Unknown {
        return Some("its role is unknown".into());
    }
    if rules.needs_sync && n.sync_allowed == Some(false) {
        return Some(
            "it refuses PSYNC to the agent's user (grant +psync +replconf, see the agent's ACL)"
                .into(),
        );
    }
    if let Some(available) = n.host_memory_available_bytes {
        let needed = (n.used_memory_bytes as f64 * rules.cow_headroom) as u64;
        if available < needed {
            return Some(format!(
                "its host has {} MiB available, a fork may need {} MiB ({:.0}% of {} MiB used)",
                available >> 20,
                needed >> 20,
                rules.cow_headroom * 100.0,
                n.used_memory_bytes >> 20
            ));
        }
    }
    None
}

/// Ranks the nodes of one shard (docs/design.md §5): qualifying nodes by lag, replica before primary,
/// preferred zone, then address; the primary only as the policy allows.
pub fn plan_shard(shard: &ShardView, rules: &Rules) -> ShardPlan {
    let primary_offset = shard
        .nodes
        .iter()
        .find(|n| n.role == Role::Primary)
        .map(|n| n.offset);
    let choice = |n: &NodeView, reason: String| NodeChoice {
        name: n.name.clone(),
        address: n.address.clone(),
        agent: n.agent.clone(),
        role: n.role,
        lag_bytes: match n.role {
            Role::Primary => Some(0),
            _ => n.lag_bytes,
        },
        zone: n.zone.clone(),
        rank: None,
        reason,
    };
    let mut passed = Vec::new();
    let mut replicas = Vec::new();
    let mut primary = None;
    for n in &shard.nodes {
        if let Some(why) = disqualified(n, rules) {
            passed.push(choice(n, why));
        } else if n.role == Role::Primary {
            primary = Some(n);
        } else if n.lag_bytes.is_none() {
            passed.push(choice(
                n,
                "its lag is unknown: no report from its primary".into(),
            ));
        } else {
            replicas.push(n);
        }
    }
    let zone_rank = |n: &NodeView| {
        rules
            .preferred_zones
            .iter()
            .position(|z| !n.zone.is_empty() && *z == n.zone)
            .unwrap_or(rules.preferred_zones.len())
    };
    let lag = |n: &NodeView| match n.role {
        Role::Primary => 0,
        _ => n.lag_bytes.unwrap_or(u64::MAX),
    };
    let mut ranked: Vec<&NodeView> = replicas.clone();
    let mut last = None;
    let primary_note = match (primary, rules.allow_primary) {
        (Some(p), AllowPrimary::Always) => {
            ranked.push(p);
            None
        }
        (Some(p), AllowPrimary::Fallback) if replicas.is_empty() => {
            ranked.push(p);
            None
        }
        (Some(p), AllowPrimary::Fallback) => {
            last = Some(p);
            None
        }
        (Some(p), AllowPrimary::Never) => Some((
            p,
            "the primary: the policy never snapshots primaries".to_string(),
        )),
        (None, _) => None,
    };
    ranked.sort_by(|a, b| {
        lag(a)
            .cmp(&lag(b))
            .then_with(|| (a.role == Role::Primary).cmp(&(b.role == Role::Primary)))
            .then_with(|| zone_rank(a).cmp(&zone_rank(b)))
            .then_with(|| a.address.cmp(&b.address))
    });
    ranked.extend(last);
    let mut nodes: Vec<NodeChoice> = Vec::new();
    for (i, n) in ranked.iter().enumerate() {
        let mut why = match n.role {
            Role::Primary if replicas.is_empty() => {
                "the primary, as no replica qualifies".to_string()
            }
            Role::Primary if last.is_some() => {
                "the primary: the policy falls back to it only if every replica fails".to_string()
            }
            Role::Primary => "the primary (the policy allows it like a replica)".to_string(),
            _ => format!("{} bytes behind the primary", lag(n)),
        };
        if !n.zone.is_empty() && zone_rank(n) < rules.preferred_zones.len() {
            why.push_str(&format!(", in preferred zone {}", n.zone));
        }
        if i > 0 {
            let first = ranked[0];
            let behind = if last.is_some() && n.role == Role::Primary {
                "after every replica, as"
            } else if lag(n) > lag(first) {
                "staler than"
            } else if n.role == Role::Primary && first.role != Role::Primary {
                "a primary, ranked after"
            } else if zone_rank(n) > zone_rank(first) {
                "in a less preferred zone than"
            } else {
                "equal to, ordered by address after"
            };
            why.push_str(&format!("; {behind} {}", first.address));
        }
        let mut c = choice(n, why);
        c.rank = Some(i as u32 + 1);
        nodes.push(c);
    }
    if let Some((p, why)) = primary_note {
        passed.insert(0, choice(p, why));
    }
    let failure = nodes.is_empty().then(|| {
        if shard.nodes.is_empty() {
            "the shard has no nodes".to_string()
        } else {
            let reasons: Vec<String> = passed
                .iter()
                .map(|n| format!("{}: {}", n.address, n.reason))
                .collect();
            format!("no node qualifies ({})", reasons.join("; "))
        }
    });
    nodes.extend(passed);
    ShardPlan {
        shard: shard.id.clone(),
        slots: shard.slots.clone(),
        replid: shard.replid.clone(),
        primary_offset,
        nodes,
        failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn primary(addr: &str, offset: u64) -> NodeView {
        NodeView {
            name: addr.into(),
            address: addr.into(),
            agent: format!("agent-{addr}"),
            role: Role::Primary,
            reachable: true,
            offset,
            persistence: "ok".into(),
            report_age_ms: 500,
            sync_allowed: Some(true),
            ..Default::default()
        }
    }

    fn replica(addr: &str, lag: u64) -> NodeView {
        NodeView {
            role: Role::Replica,
            lag_bytes: Some(lag),
            link: Some("up".into()),
            ..primary(addr, 100_000 - lag)
        }
    }

    fn shard(nodes: Vec<NodeView>) -> ShardView {
        ShardView {
            id: "0-5460".into(),
            slots: vec![(0, 5460)],
            primary: Some("p:1".into()),
            replid: "r".repeat(40),
            nodes,
        }
    }

    fn order(plan: &ShardPlan) -> Vec<(&str, Option<u32>)> {
        plan.nodes
            .iter()
            .map(|n| (n.address.as_str(), n.rank))
            .collect()
    }

    #[test]
    fn the_freshest_healthy_replica_wins_and_every_node_has_its_reason() {
        let mut lagging = replica("r-lag:1", 5000);
        lagging.zone = "b".into();
        let fresh = replica("r-fresh:1", 10);
        let mut down = replica("r-down:1", 0);
        down.link = Some("down".into());
        let mut forking = replica("r-fork:1", 0);
        forking.persistence = "bgsave".into();
        let mut silent = replica("r-silent:1", 0);
        silent.report_age_ms = 4200;
        let mut loading = replica("r-load:1", 0);
        loading.persistence = "loading".into();
        let mut tight = replica("r-mem:1", 0);
        tight.used_memory_bytes = 8 << 30;
        tight.host_memory_available_bytes = Some(1 << 30);
        let mut refused = replica("r-acl:1", 0);
        refused.sync_allowed = Some(false);
        let plan = plan_shard(
            &shard(vec![
                primary("p:1", 1000),
                lagging,
                fresh,
                down,
                forking,
                silent,
                loading,
                tight,
                refused,
            ]),
            &Rules::default(),
        );
        assert_eq!(plan.failure, None);
        assert_eq!(plan.chosen().unwrap().address, "r-fresh:1");
        assert_eq!(
            order(&plan),
            vec![
                ("r-fresh:1", Some(1)),
                ("r-lag:1", Some(2)),
                ("p:1", Some(3)),
                ("r-down:1", None),
                ("r-fork:1", None),
                ("r-silent:1", None),
                ("r-load:1", None),
                ("r-mem:1", None),
                ("r-acl:1", None),
            ]
        );
        let reason = |a: &str| {
            plan.nodes
                .iter()
                .find(|n| n.address == a)
                .unwrap()
                .reason
                .clone()
        };
        assert_eq!(reason("r-fresh:1"), "10 bytes behind the primary");
        assert_eq!(
            reason("r-lag:1"),
            "5000 bytes behind the primary; staler than r-fresh:1"
        );
        assert!(reason("p:1").contains("only if every replica fails"));
        assert!(reason("r-down:1").contains("link to the primary is down"));
        assert!(reason("r-fork:1").contains("fork is already running"));
        assert!(reason("r-silent:1").contains("4.2 s ago"));
        assert!(reason("r-load:1").contains("loading"));
        assert!(reason("r-mem:1").contains("1024 MiB available"));
        assert!(reason("r-acl:1").contains("refuses PSYNC"));
    }

    #[test]
    fn the_primary_as_the_policy_says() {
        let mut down = replica("r:1", 0);
        down.link = Some("down".into());
        let nodes = vec![primary("p:1", 1000), down];
        let cases = [
            (AllowPrimary::Never, None),
            (AllowPrimary::Fallback, Some("p:1")),
            (AllowPrimary::Always, Some("p:1")),
        ];
        for (allow, chosen) in cases {
            let rules = Rules {
                allow_primary: allow,
                ..Rules::default()
            };
            let plan = plan_shard(&shard(nodes.clone()), &rules);
            assert_eq!(
                plan.chosen().map(|n| n.address.as_str()),
                chosen,
                "{allow:?}"
            );
            assert_eq!(plan.failure.is_some(), chosen.is_none(), "{allow:?}");
        }
        let never = plan_shard(
            &shard(nodes.clone()),
            &Rules {
                allow_primary: AllowPrimary::Never,
                ..Rules::default()
            },
        );
        let failure = never.failure.unwrap();
        assert!(failure.contains("never snapshots primaries"), "{failure}");
        assert!(
            failure.contains("r:1: its link to the primary is down"),
            "{failure}"
        );

        // Always: the primary has no lag, but a replica with none goes first.
        let plan = plan_shard(
            &shard(vec![primary("p:1", 1000), replica("r:1", 0)]),
            &Rules {
                allow_primary: AllowPrimary::Always,
                ..Rules::default()
            },
        );
        assert_eq!(order(&plan), vec![("r:1", Some(1)), ("p:1", Some(2))]);
        let plan = plan_shard(
            &shard(vec![primary("p:1", 1000), replica("r:1", 7)]),
            &Rules {
                allow_primary: AllowPrimary::Always,
                ..Rules::default()
            },
        );
        assert_eq!(order(&plan), vec![("p:1", Some(1)), ("r:1", Some(2))]);
    }

    #[test]
    fn zones_break_ties_in_lag_then_addresses_do() {
        let mut a = replica("a:1", 0);
        a.zone = "z3".into();
        let mut b = replica("b:1", 0);
        b.zone = "z1".into();
        let mut c = replica("c:1", 0);
        c.zone = "z1".into();
        let d = replica("d:1", 0);
        let rules = Rules {
            preferred_zones: vec!["z1".into(), "z2".into()],
            ..Rules::default()
        };
        let plan = plan_shard(&shard(vec![primary("p:1", 1000), d, c, b, a]), &rules);
        assert_eq!(
            order(&plan),
            vec![
                ("b:1", Some(1)),
                ("c:1", Some(2)),
                ("a:1", Some(3)),
                ("d:1", Some(4)),
                ("p:1", Some(5)),
            ]
        );
        assert!(plan.nodes[0].reason.contains("preferred zone z1"));
        assert!(plan.nodes[2].reason.contains("less preferred zone"));
        // Lag still comes first.
        let mut stale = replica("b:1", 1);
        stale.zone = "z1".into();
        let plan = plan_shard(
            &shard(vec![primary("p:1", 1000), stale, replica("d:1", 0)]),
            &rules,
        );
        assert_eq!(plan.chosen().unwrap().address, "d:1");
    }

    #[test]
    fn a_shard_with_no_nodes_or_no_lag_fails_with_its_reason() {
        let empty = plan_shard(&shard(vec![]), &Rules::default());
        assert_eq!(empty.failure.as_deref(), Some("the shard has no nodes"));
        let mut unknown = replica("r:1", 0);
        unknown.lag_bytes = None;
        let plan = plan_shard(
            &shard(vec![unknown]),
            &Rules {
                allow_primary: AllowPrimary::Never,
                ..Rules::default()
            },
        );
        assert!(plan.failure.unwrap().contains("lag is unknown"));
    }
}
