//! Which backup sets a policy keeps (docs/design.md §9): grandfather-father-son rules, pure.
//!
//! The leader runs [`select`] over a cluster's sets, commits the sets to delete as a plan, and the
//! plan is carried out per region. Each rule keeps sets on its own and a set is kept if any rule
//! keeps it, as restic and borg do: `keep_daily = 7` keeps the newest set of each of the 7 newest
//! days that have one. Only restorable sets (complete or degraded) fill the rules; failed sets
//! are deleted, sets still being written are never touched, and the newest restorable set is kept
//! whatever the rules say. A set under Object Lock that the rules would delete is reported as
//! locked, and left alone until its lock ends.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::BackupId;

/// A policy's retention rules. All zero (the default) keeps every set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// The newest N sets.
    #[serde(default)]
    pub keep_last: u32,
    /// The newest set of each of the N newest hours that have one (UTC).
    #[serde(default)]
    pub keep_hourly: u32,
    /// … of each of the N newest days.
    #[serde(default)]
    pub keep_daily: u32,
    /// … of each of the N newest ISO weeks.
    #[serde(default)]
    pub keep_weekly: u32,
    /// … of each of the N newest months.
    #[serde(default)]
    pub keep_monthly: u32,
    /// Every set younger than this many seconds.
    #[serde(default)]
    pub keep_within_seconds: u64,
    /// Objects no manifest lists (a crashed upload's) are deleted once their set id is older
    /// than this (default: a day).
    #[serde(default = "default_orphan_grace")]
    pub orphan_grace_seconds: u64,
}

fn default_orphan_grace() -> u64 {
    86_400
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            keep_last: 0,
            keep_hourly: 0,
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 0,
            keep_within_seconds: 0,
            orphan_grace_seconds: default_orphan_grace(),
        }
    }
}

impl Retention {
    /// Whether no rule is set: then every set is kept.
    pub fn keeps_everything(&self) -> bool {
        let Self {
            keep_last,
            keep_hourly,
            keep_daily,
            keep_weekly,
            keep_monthly,
            keep_within_seconds,
            orphan_grace_seconds: _,
        } = *self;
        [
            keep_last,
            keep_hourly,
            keep_daily,
            keep_weekly,
            keep_monthly,
        ]
        .iter()
        .all(|n| *n == 0)
            && keep_within_seconds == 0
    }
}

/// Where a set stands, as the catalog records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetState {
    /// Still being written.
    Running,
    /// Verified in at least `min_regions` regions.
    Complete,
    /// Verified in fewer regions than asked, but in one at least.
    Degraded,
    /// In no region.
    Failed,
}

impl SetState {
    /// The word in documents and tables (as serialised).
    pub fn as_str(self) -> &'static str {
        match self {
            SetState::Running => "running",
            SetState::Complete => "complete",
            SetState::Degraded => "degraded",
            SetState::Failed => "failed",
        }
    }
}

/// A set as retention sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetInfo {
    /// Its id.
    pub id: BackupId,
    /// When its window started.
    pub at: OffsetDateTime,
    /// Its state.
    pub state: SetState,
    /// The end of its Object Lock retention, if its objects are locked.
    pub locked_until: Option<OffsetDateTime>,
}

/// What happens to a set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Action {
    /// Kept, for these reasons.
    Keep {
        /// Every rule that keeps it.
        reasons: Vec<String>,
    },
    /// Deleted.
    Delete {
        /// Why no rule keeps it.
        reason: String,
    },
    /// The rules would delete it, but its objects are locked until then.
    Locked {
        /// The end of the lock (RFC 3339).
        until: String,
    },
}

/// The decision for one set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The set.
    pub id: BackupId,
    /// What happens to it.
    pub action: Action,
}

/// The calendar period a time falls in, as (year, period of the year, hour).
type Bucket = fn(OffsetDateTime) -> (i32, u32, u32);

/// Decides, for every set of one cluster and policy, whether it is kept. The result is in the
/// order of `sets`.
pub fn select(sets: &[SetInfo], rules: &Retention, now: OffsetDateTime) -> Vec<Decision> {
    let mut reasons: Vec<Vec<String>> = vec![Vec::new(); sets.len()];
    // Restorable sets, newest first (ties by id, which also sorts by time).
    let mut order: Vec<usize> = (0..sets.len())
        .filter(|&i| matches!(sets[i].state, SetState::Complete | SetState::Degraded))
        .collect();
    order.sort_by(|&a, &b| {
        sets[b]
            .at
            .cmp(&sets[a].at)
            .then_with(|| sets[b].id.cmp(&sets[a].id))
    });
    if let Some(&newest) = order.first() {
        reasons[newest].push("the newest restorable set".into());
    }
    for &i in order.iter().take(rules.keep_last as usize) {
        reasons[i].push(format!("keep_last {}", rules.keep_last));
    }
    let periods: [(u32, &str, Bucket); 4] = [
        (rules.keep_hourly, "keep_hourly", |t| {
            (t.year(), t.ordinal().into(), t.hour().into())
        }),
        (rules.keep_daily, "keep_daily", |t| {
            (t.year(), t.ordinal().into(), 0)
        }),
        (rules.keep_weekly, "keep_weekly", |t| {
            let (y, w, _) = t.to_iso_week_date();
            (y, w.into(), 0)
        }),
        (rules.keep_monthly, "keep_monthly", |t| {
            (t.year(), u8::from(t.month()).into(), 0)
        }),
    ];
    for (count, name, bucket) in periods {
        let mut last = None;
        let mut kept = 0;
        for &i in &order {
            if kept == count {
                break;
            }
            let b = bucket(sets[i].at);
            if last != Some(b) {
                last = Some(b);
                kept += 1;
                reasons[i].push(format!("{name} {count}"));
            }
        }
    }
    if rules.keep_within_seconds > 0 {
        let since = now - time::Duration::seconds(rules.keep_within_seconds as i64);
        for &i in &order {
            if sets[i].at >= since {
                reasons[i].push(format!("keep_within {}s", rules.keep_within_seconds));
            }
        }
    }
    sets.iter()
        .zip(reasons)
        .map(|(s, mut why)| {
            let action = if s.state == SetState::Running {
                Action::Keep {
                    reasons: vec!["still being written".into()],
                }
            } else if rules.keeps_everything() && s.state != SetState::Failed {
                Action::Keep {
                    reasons: vec!["the policy sets no retention rule".into()],
                }
            } else if !why.is_empty() {
                why.dedup();
                Action::Keep { reasons: why }
            } else if let Some(until) = s.locked_until.filter(|u| *u > now) {
                Action::Locked {
                    until: until
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                }
            } else if s.state == SetState::Failed {
                Action::Delete {
                    reason: "failed: no region holds a verified copy".into(),
                }
            } else {
                Action::Delete {
                    reason: "no rule keeps it".into(),
                }
            };
            Decision {
                id: s.id.clone(),
                action,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn set(at: OffsetDateTime, state: SetState) -> SetInfo {
        SetInfo {
            id: BackupId::from_parts(at, 0),
            at,
            state,
            locked_until: None,
        }
    }

    /// Sets every `step_hours` from `start`, `n` of them, all complete.
    fn series(start: OffsetDateTime, step_hours: i64, n: usize) -> Vec<SetInfo> {
        (0..n)
            .map(|i| {
                set(
                    start + time::Duration::hours(step_hours * i as i64),
                    SetState::Complete,
                )
            })
            .collect()
    }

    fn kept(sets: &[SetInfo], rules: &Retention, now: OffsetDateTime) -> Vec<OffsetDateTime> {
        select(sets, rules, now)
            .iter()
            .zip(sets)
            .filter(|(d, _)| matches!(d.action, Action::Keep { .. }))
            .map(|(_, s)| s.at)
            .collect()
    }

    #[test]
    fn grandfather_father_son_tables() {
        // Every 6 hours for 60 days, from Monday 2026-03-02 00:00 UTC.
        let start = datetime!(2026-03-02 00:00 UTC);
        let sets = series(start, 6, 240);
        let last = sets.last().unwrap().at; // 2026-04-30 18:00
        let now = last + time::Duration::minutes(30);
        let rules = |f: &dyn Fn(&mut Retention)| {
            let mut r = Retention::default();
            f(&mut r);
            r
        };
        let cases: Vec<(&str, Retention, Vec<OffsetDateTime>)> = vec![
            (
                "keep_last 3",
                rules(&|r| r.keep_last = 3),
                vec![
                    datetime!(2026-04-30 06:00 UTC),
                    datetime!(2026-04-30 12:00 UTC),
                    datetime!(2026-04-30 18:00 UTC),
                ],
            ),
            (
                "keep_daily 3: the newest of each of the last 3 days",
                rules(&|r| r.keep_daily = 3),
                vec![
                    datetime!(2026-04-28 18:00 UTC),
                    datetime!(2026-04-29 18:00 UTC),
                    datetime!(2026-04-30 18:00 UTC),
                ],
            ),
            (
                "keep_hourly 2 (one set per 6 h: two sets)",
                rules(&|r| r.keep_hourly = 2),
                vec![
                    datetime!(2026-04-30 12:00 UTC),
                    datetime!(2026-04-30 18:00 UTC),
                ],
            ),
            (
                "keep_weekly 3: ISO weeks end on Sunday",
                rules(&|r| r.keep_weekly = 3),
                vec![
                    datetime!(2026-04-19 18:00 UTC),
                    datetime!(2026-04-26 18:00 UTC),
                    datetime!(2026-04-30 18:00 UTC),
                ],
            ),
            (
                "keep_monthly 5: only two months exist",
                rules(&|r| r.keep_monthly = 5),
                vec![
                    datetime!(2026-03-31 18:00 UTC),
                    datetime!(2026-04-30 18:00 UTC),
                ],
            ),
            (
                "keep_within 1 day",
                rules(&|r| r.keep_within_seconds = 86_400),
                vec![
                    datetime!(2026-04-30 00:00 UTC),
                    datetime!(2026-04-30 06:00 UTC),
                    datetime!(2026-04-30 12:00 UTC),
                    datetime!(2026-04-30 18:00 UTC),
                ],
            ),
            (
                "rules add up: last 2 + daily 2 + monthly 2",
                rules(&|r| {
                    r.keep_last = 2;
                    r.keep_daily = 2;
                    r.keep_monthly = 2;
                }),
                vec![
                    datetime!(2026-03-31 18:00 UTC),
                    datetime!(2026-04-29 18:00 UTC),
                    datetime!(2026-04-30 12:00 UTC),
                    datetime!(2026-04-30 18:00 UTC),
                ],
            ),
        ];
        for (name, rules, want) in cases {
            assert_eq!(kept(&sets, &rules, now), want, "{name}");
        }
        // No rule: everything stays.
        assert_eq!(kept(&sets, &Retention::default(), now).len(), sets.len());
    }

    #[test]
    fn running_failed_degraded_and_locked_sets() {
        let t = |h: i64| datetime!(2026-05-01 00:00 UTC) + time::Duration::hours(h);
        let mut sets = vec![
            set(t(0), SetState::Complete),
            set(t(1), SetState::Degraded),
            set(t(2), SetState::Failed),
            set(t(3), SetState::Running),
            set(t(-10), SetState::Complete),
        ];
        sets[4].locked_until = Some(t(100));
        let rules = Retention {
            keep_last: 1,
            ..Retention::default()
        };
        let d = select(&sets, &rules, t(4));
        // The degraded set is the newest restorable one; the complete one before it goes.
        assert!(
            matches!(&d[1].action, Action::Keep { reasons } if reasons.contains(&"keep_last 1".to_string()))
        );
        assert_eq!(
            d[0].action,
            Action::Delete {
                reason: "no rule keeps it".into()
            }
        );
        assert_eq!(
            d[2].action,
            Action::Delete {
                reason: "failed: no region holds a verified copy".into()
            }
        );
        assert!(
            matches!(&d[3].action, Action::Keep { reasons } if reasons[0] == "still being written")
        );
        assert_eq!(
            d[4].action,
            Action::Locked {
                until: "2026-05-05T04:00:00Z".into()
            }
        );
        // A lock that has ended no longer protects.
        let d = select(&sets, &rules, t(101));
        assert!(matches!(d[4].action, Action::Delete { .. }));
    }

    #[test]
    fn the_newest_restorable_set_survives_any_rule() {
        let sets = series(datetime!(2026-01-01 00:00 UTC), 24, 3);
        let rules = Retention {
            keep_within_seconds: 60,
            ..Retention::default()
        };
        // Every set is older than a minute: the newest is kept all the same.
        let kept = kept(&sets, &rules, datetime!(2026-06-01 00:00 UTC));
        assert_eq!(kept, vec![datetime!(2026-01-03 00:00 UTC)]);
    }
}
