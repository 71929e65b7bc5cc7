//! Continuous archives (docs/archive.md): every shard of a policy with `[policy.archive]` has one
//! archive job at a time, leased to the agent of the shard's best node. The job loop fails a job
//! whose agent goes silent past the lease; this loop then hands the shard to the best node's
//! agent, under the same storage name, and the new archiver continues the chain from where the
//! regions hold it. A job whose source has not been a reachable node of its shard for a lease, or
//! whose policy no longer archives the shard, is ended here and its agent told to stop.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetsnap_core::planner;
use fleetsnap_core::policy::Policy;
use fleetsnap_core::records::{ArchiveRow, ArchiveSpec, JobKind};
use fleetsnap_core::topology::{ShardView, storage_shard};
use fleetsnap_proto::v1::{self, coordinator_message};

use super::*;
use crate::state::CatalogSpec;
use crate::state::{Command, Job, JobState};

/// How often the leader looks at the archives.
const ROUND: Duration = Duration::from_secs(1);
/// The least time between two jobs of one shard (a job that fails at once is not retried in a
/// tight loop).
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// How long a new leader lets its agents' reports come in before it leases shards.
const SETTLE: Duration = Duration::from_secs(3);

/// The archive loop's memory for one leadership.
#[derive(Default)]
struct Memory {
    /// When the last job of each (cluster, shard name) was created.
    created: HashMap<(String, String), Instant>,
    /// Open jobs whose source is not a reachable node of any shard, since when.
    adrift: HashMap<u64, Instant>,
    /// When each cluster's last exact point was due, and why the last one failed.
    points: HashMap<String, (Instant, Option<String>)>,
    /// When each cluster's last read of its chains into the catalog began.
    catalog: HashMap<String, Instant>,
}

/// One shard of an archived cluster this round: the fleet's view of it, its name in the storage
/// layout, and the agent holding its archive.
struct Archived<'a> {
    view: &'a ShardView,
    name: String,
    holder: Option<String>,
}

fn spec(job: &Job) -> Option<&ArchiveSpec> {
    match &job.kind {
        JobKind::Archive(a) => Some(a),
        _ => None,
    }
}

/// Whether `job`'s source is a node of `shard` (reachable, when `reachable`).
fn sources_from(job: &Job, shard: &ShardView, reachable: bool) -> bool {
    spec(job).is_some_and(|a| {
        shard
            .nodes
            .iter()
            .any(|n| n.agent == job.agent && n.name == a.instance && (n.reachable || !reachable))
    })
}

impl Node {
    /// Keeps one archive job per archived shard (the leader only).
    pub(super) async fn archive_loop(self: Arc<Self>) {
        let mut memory = Memory::default();
        loop {
            if !self.next_round(ROUND, None).await {
                memory = Memory::default();
                self.archive_rows.lock().expect("lock").clear();
                continue;
            }
            let settled = self
                .fleet
                .leader_since
                .lock()
                .expect("lock")
                .is_some_and(|s| s.elapsed() >= SETTLE);
            if settled {
                self.clone().archive_round(&mut memory).await;
            }
        }
    }

    async fn archive_round(self: Arc<Self>, memory: &mut Memory) {
        let (policies, jobs): (Vec<Policy>, Vec<Job>) = {
            let s = self.state.read().expect("state lock");
            (
                s.state
                    .policies
                    .values()
                    .filter(|p| p.archive.is_some())
                    .cloned()
                    .collect(),
                s.state
                    .jobs
                    .values()
                    .filter(|j| self::spec(j).is_some())
                    .cloned()
                    .collect(),
            )
        };
        let open: Vec<&Job> = jobs
            .iter()
            .filter(|j| !matches!(j.state, JobState::Done(_)))
            .collect();
        let view = self.view("");
        let mut rows = Vec::new();
        let mut covered: HashSet<u64> = HashSet::new();
        let mut archived: HashMap<String, String> = HashMap::new();
        let mut shards_of: HashMap<String, Vec<Archived<'_>>> = HashMap::new();
        for p in &policies {
            let rules = p.rules();
            for cluster in &p.clusters {
                let cluster = cluster.to_string();
                // One policy archives a cluster: the first by name.
                if archived.contains_key(&cluster) {
                    continue;
                }
                archived.insert(cluster.clone(), p.name.clone());
                let Some(c) = view.clusters.iter().find(|c| c.name == cluster) else {
                    continue;
                };
                for s in c
                    .shards
                    .iter()
                    .filter(|s| s.id != "unreachable" && s.id != "unattached")
                {
                    let in_cluster = |j: &&Job| spec(j).is_some_and(|a| a.cluster == cluster);
                    // The shard keeps the name its archive had (a failover renames a
                    // standalone shard after its new primary; the chain goes on).
                    let name = archive_name(&jobs, &cluster, s);
                    let mut row = ArchiveRow {
                        policy: p.name.clone(),
                        cluster: cluster.clone(),
                        shard: name.clone(),
                        ..Default::default()
                    };
                    let this = shards_of.entry(cluster.clone()).or_default();
                    this.push(Archived {
                        view: s,
                        name: name.clone(),
                        holder: None,
                    });
                    if let Some(j) = open
                        .iter()
                        .copied()
                        .filter(in_cluster)
                        .find(|j| sources_from(j, s, true))
                    {
                        covered.insert(j.id);
                        row.job = Some(j.id);
                        row.agent = j.agent.clone();
                        if let Some(last) = this.last_mut() {
                            last.holder = Some(j.agent.clone());
                        }
                        rows.push(row);
                        continue;
                    }
                    if let Some(j) = open
                        .iter()
                        .copied()
                        .filter(in_cluster)
                        .find(|j| spec(j).is_some_and(|a| a.shard == name))
                    {
                        row.note = format!(
                            "job {} on agent {:?} holds the lease; its source is not a reachable node of the shard",
                            j.id, j.agent
                        );
                        rows.push(row);
                        continue;
                    }
                    if let Some(last) = jobs
                        .iter()
                        .rev()
                        .filter(in_cluster)
                        .find(|j| spec(j).is_some_and(|a| a.shard == name))
                        && let Some(why) = last.state.failure()
                    {
                        row.note = format!("job {} ended: {why}", last.id);
                    }
                    let key = (cluster.clone(), name.clone());
                    if memory
                        .created
                        .get(&key)
                        .is_some_and(|t| t.elapsed() < RETRY_AFTER)
                    {
                        rows.push(row);
                        continue;
                    }
                    let plan = planner::plan_shard(s, &rules);
                    let Some(chosen) = plan.chosen() else {
                        row.note = format!(
                            "no node can be the source: {}",
                            plan.failure.unwrap_or_else(|| "no candidate".into())
                        );
                        rows.push(row);
                        continue;
                    };
                    let Some(a) = &p.archive else { continue };
                    let job = JobKind::Archive(ArchiveSpec {
                        policy: p.name.clone(),
                        instance: chosen.name.clone(),
                        cluster: cluster.clone(),
                        shard: name.clone(),
                        destinations: p.destinations.iter().map(|d| p.agent_url(d)).collect(),
                        regions: p.destinations.iter().map(|d| d.region.clone()).collect(),
                        compress: p.compress.clone(),
                        encrypt_to: p.encrypt_to.clone(),
                        segment_seconds: a.segment_seconds,
                        segment_max_bytes: a.segment_max_bytes,
                        spool_max_bytes: a.spool_max_bytes,
                        keep_seconds: a
                            .keep
                            .as_deref()
                            .and_then(|k| fleetsnap_core::policy::parse_span(k).ok())
                            .map(|d| d.as_secs()),
                        lease_ms: self.lease.as_millis() as u64,
                    });
                    memory.created.insert(key, Instant::now());
                    let agent = chosen.agent.clone();
                    match self
                        .write(Command::CreateJob {
                            agent: agent.clone(),
                            job,
                        })
                        .await
                    {
                        Ok((resp, _, _)) => {
                            tracing::info!(job = ?resp.job, %cluster, shard = %name, %agent, source = %chosen.address, "archive leased");
                            row.job = resp.job;
                            row.agent = agent;
                            row.note.clear();
                            self.wake.notify_one();
                        }
                        Err(e) => {
                            row.note = format!("the lease could not be written: {}", e.message())
                        }
                    }
                    rows.push(row);
                }
            }
        }
        memory
            .adrift
            .retain(|id, _| open.iter().any(|j| j.id == *id));
        for j in open.iter().filter(|j| !covered.contains(&j.id)) {
            let Some(a) = spec(j) else { continue };
            let why = if archived.get(&a.cluster) != Some(&a.policy) {
                Some(format!(
                    "policy {:?} no longer archives cluster {:?}",
                    a.policy, a.cluster
                ))
            } else {
                let since = *memory.adrift.entry(j.id).or_insert_with(Instant::now);
                (since.elapsed() > self.lease).then(|| {
                    format!(
                        "its source {:?} on agent {:?} has not been a reachable node of shard {} for {} s: the shard goes to another node",
                        a.instance,
                        j.agent,
                        a.shard,
                        self.lease.as_secs()
                    )
                })
            };
            if let Some(why) = why {
                self.end_job(j, why).await;
            }
        }
        for p in &policies {
            let Some(every) = p
                .archive
                .as_ref()
                .and_then(|a| a.exact_points_every.as_deref())
                .and_then(|e| fleetsnap_core::policy::parse_span(e).ok())
            else {
                continue;
            };
            for (cluster, shards) in &shards_of {
                if archived.get(cluster) != Some(&p.name) {
                    continue;
                }
                let (due, _) = memory
                    .points
                    .entry(cluster.clone())
                    .or_insert_with(|| (Instant::now(), None));
                if due.elapsed() < every {
                    continue;
                }
                let outcome = self.clone().exact_point(p, cluster, shards).await;
                if let Err(e) = &outcome {
                    tracing::warn!(%cluster, error = %e, "no exact point this time");
                }
                memory
                    .points
                    .insert(cluster.clone(), (Instant::now(), outcome.err()));
            }
        }
        for r in &mut rows {
            if let Some((_, Some(why))) = memory.points.get(&r.cluster)
                && r.note.is_empty()
            {
                r.note = format!("the last exact point failed: {why}");
            }
        }
        *self.archive_rows.lock().expect("lock") = rows;
        let clusters = self.archived_clusters();
        self.refresh_archive_catalog(&clusters, &mut memory.catalog)
            .await;
    }

    /// Takes an exact point of `cluster` (every primary paused at once, each offset read, all
    /// released) and has the agent archiving its first shard store it in every region.
    async fn exact_point(
        self: Arc<Self>,
        p: &Policy,
        cluster: &str,
        shards: &[Archived<'_>],
    ) -> Result<(), String> {
        use fleetsnap_core::archive::{ExactPoint, PointShard, SEGMENT_FORMAT};
        use fleetsnap_core::report::Role;
        let mut primaries = Vec::new();
        for (i, s) in shards.iter().enumerate() {
            if s.holder.is_none() {
                return Err(format!("shard {} has no archiver yet", s.name));
            }
            let n = s
                .view
                .nodes
                .iter()
                .find(|n| n.role == Role::Primary && n.reachable)
                .ok_or_else(|| format!("no agent reaches the primary of shard {}", s.name))?;
            primaries.push(super::cut::Primary {
                shard: i,
                agent: n.agent.clone(),
                instance: n.name.clone(),
                address: n.address.clone(),
            });
        }
        let Some(agent) = shards.first().and_then(|s| s.holder.clone()) else {
            return Err("the cluster has no archived shard".into());
        };
        let paused = self
            .clone()
            .pause_all(&primaries, p.write_pause_budget_ms)
            .await?;
        let mut point_shards = Vec::new();
        for (s, r) in shards.iter().zip(&paused.replies) {
            point_shards.push(PointShard {
                shard: fleetsnap_core::ShardId::new(&s.name).map_err(|e| e.to_string())?,
                replid: r.replid.clone(),
                offset: r.offset,
            });
        }
        let point = ExactPoint {
            format: SEGMENT_FORMAT,
            cluster: fleetsnap_core::ClusterId::new(cluster).map_err(|e| e.to_string())?,
            at_ms: paused.paused_at_us / 1000,
            pause_us: paused
                .replies
                .iter()
                .map(|r| r.paused_us)
                .max()
                .unwrap_or(0),
            shards: point_shards,
        };
        let job = JobKind::StorePoint(fleetsnap_core::records::PointSpec {
            destinations: p.destinations.iter().map(|d| p.agent_url(d)).collect(),
            point,
        });
        self.write(Command::CreateJob { agent, job })
            .await
            .map_err(|e| format!("the point could not be written to the log: {}", e.message()))?;
        self.wake.notify_one();
        tracing::info!(%cluster, round_ms = paused.round.as_millis() as u64, "exact point taken");
        Ok(())
    }

    /// Records that a running job ended, and tells its agent to stop it.
    async fn end_job(&self, job: &Job, why: String) {
        self.fail_job(job.id, why.clone()).await;
        let tx = self
            .fleet
            .agents
            .lock()
            .expect("lock")
            .get(&job.agent)
            .and_then(|a| a.tx.clone());
        if let Some(tx) = tx {
            let _ = tx.send(Ok(stop_message(job.id, why))).await;
        }
    }

    /// Tells an agent to stop the jobs it says it runs that the log says have ended (an archive
    /// whose lease lapsed while the agent was away).
    pub(super) async fn stop_ended(&self, agent: &str, running: &[u64], tx: &Outbound) {
        let ended: Vec<(u64, String)> = {
            let s = self.state.read().expect("state lock");
            running
                .iter()
                .filter_map(|id| s.state.jobs.get(id))
                .filter(|j| j.agent == agent)
                .filter_map(|j| match &j.state {
                    JobState::Done(o) => Some((
                        j.id,
                        match o {
                            crate::state::JobOutcome::Failed { reason } => reason.clone(),
                            _ => "it succeeded".into(),
                        },
                    )),
                    _ => None,
                })
                .collect()
        };
        for (id, why) in ended {
            tracing::info!(
                job = id,
                agent,
                "the agent runs a job the log ended; stopping it"
            );
            let _ = tx
                .send(Ok(stop_message(
                    id,
                    format!("the job ended while the agent was away: {why}"),
                )))
                .await;
        }
    }

    /// Every archived shard (of `cluster`, or all), with what its agent last reported.
    pub(super) fn archive_rows(&self, cluster: &str) -> Vec<ArchiveRow> {
        let mut rows: Vec<ArchiveRow> = self
            .archive_rows
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| cluster.is_empty() || r.cluster == cluster)
            .cloned()
            .collect();
        {
            let s = self.state.read().expect("state lock");
            for r in &mut rows {
                if let Some(c) = s.state.archive.get(&r.cluster) {
                    r.catalog_scanned_at_ms = Some(c.scanned_at_ms);
                    r.chains = c.shards.get(&r.shard).cloned().unwrap_or_default();
                }
            }
        }
        let agents = self.fleet.agents.lock().expect("lock");
        for r in &mut rows {
            let Some(p) = r.job.and_then(|id| {
                agents
                    .get(&r.agent)
                    .and_then(|a| a.archives.iter().find(|p| p.job_id == id))
            }) else {
                continue;
            };
            r.source = p.source.clone();
            r.connected = p.connected;
            r.lag_seconds = Some(p.lag_seconds);
            r.replid = p.replid.clone();
            r.offset = p.offset;
            r.segments = p.segments;
            r.gaps = p.gaps;
            r.restorable_until_ms = (p.restorable_until_ms > 0).then_some(p.restorable_until_ms);
        }
        rows.sort_by(|a, b| (&a.cluster, &a.shard).cmp(&(&b.cluster, &b.shard)));
        rows
    }
}

/// The name an archived shard has in the storage layout: the one its last archive job used (a
/// failover renames a standalone shard after its new primary; the chain goes on), else its id.
fn archive_name(jobs: &[Job], cluster: &str, s: &ShardView) -> String {
    jobs.iter()
        .rev()
        .filter(|j| spec(j).is_some_and(|a| a.cluster == cluster))
        .find(|j| sources_from(j, s, false))
        .and_then(spec)
        .map_or_else(|| storage_shard(&s.id), |a| a.shard.clone())
}

impl Node {
    /// The policy that archives `cluster`: the first by name with an `[archive]` that names it.
    pub(super) fn archiving_policy(&self, cluster: &str) -> Option<Policy> {
        let st = self.state.read().expect("state lock");
        st.state
            .policies
            .values()
            .find(|p| p.archive.is_some() && p.clusters.iter().any(|c| c.as_str() == cluster))
            .cloned()
    }

    /// The regions of the policy that archives `cluster`, in its order.
    pub(super) fn archive_regions(
        &self,
        cluster: &str,
    ) -> Result<Vec<fleetsnap_core::window::RegionUrl>, LeaderError> {
        let p = self.archiving_policy(cluster).ok_or_else(|| {
            LeaderError::refused(format!(
                "no policy archives cluster {cluster:?}: restores to a second and finding a command read the continuous archive; give its policy an [archive] section (docs/archive.md)"
            ))
        })?;
        Ok(p.destinations
            .iter()
            .map(|d| fleetsnap_core::window::RegionUrl {
                region: d.region.clone(),
                url: p.agent_url(d),
            })
            .collect())
    }

    /// The agent that reads `cluster`'s archive for an operator: `asked` (refused unless it is
    /// connected), else one that archives the cluster, else any connected agent.
    pub(in crate::leader) fn archive_agent(
        &self,
        cluster: &str,
        asked: &str,
    ) -> Result<String, LeaderError> {
        self.pick_asked(asked, || {
            self.archive_rows(cluster)
                .into_iter()
                .map(|row| row.agent)
                .filter(|a| !a.is_empty())
                .collect()
        })
    }

    /// The restore of every shard of archived `cluster` to a time (`at_ms`, `exact`: its
    /// latest exact point) or to just before found commands, in `mode`.
    pub(in crate::leader) fn restore_at_task(
        &self,
        cluster: &str,
        at_ms: i64,
        exact: bool,
        before: &[String],
        mode: fleetsnap_core::window::RestoreMode,
    ) -> Result<fleetsnap_core::window::RestoreAtTask, LeaderError> {
        if exact && at_ms == 0 {
            return Err(LeaderError::invalid("--exact goes with --at TIME"));
        }
        if at_ms != 0 && !before.is_empty() {
            return Err(LeaderError::invalid("give --at or --before, not both"));
        }
        if at_ms == 0 && before.is_empty() {
            return Err(LeaderError::invalid(
                "a restore from the archive goes to --at TIME or --before SHARD@REPLID:OFFSET",
            ));
        }
        let regions = self.archive_regions(cluster)?;
        Ok(fleetsnap_core::window::RestoreAtTask {
            cluster: fleetsnap_core::ClusterId::new(cluster)
                .map_err(|e| LeaderError::invalid(format!("--cluster {cluster:?}: {e}")))?,
            regions,
            shard: None,
            at_ms: (at_ms != 0).then_some(at_ms),
            exact,
            before: before.to_vec(),
            db: None,
            pattern: None,
            mode,
        })
    }

    /// `fleetsnap archive find`: one job, on an agent that archives the cluster when one is
    /// connected, that reads the regions for the commands named.
    pub(crate) async fn find_in_archive(
        &self,
        r: &v1::FindRequest,
    ) -> Result<super::restore::Started, LeaderError> {
        use fleetsnap_core::window::{CatalogTask, FindTask};
        let cluster = r.cluster.trim();
        let cluster_id = fleetsnap_core::ClusterId::new(cluster)
            .map_err(|e| LeaderError::invalid(format!("--cluster {cluster:?}: {e}")))?;
        if r.commands.iter().all(|c| c.trim().is_empty()) {
            return Err(LeaderError::invalid(
                "name a command to find: --command FLUSHALL (repeat for several)",
            ));
        }
        let until = if r.until_ms == 0 {
            fleetsnap_core::window::unix_ms(time::OffsetDateTime::now_utc())
        } else {
            r.until_ms
        };
        if until < r.since_ms {
            return Err(LeaderError::invalid(
                "--until comes before --since: give a span that starts before it ends",
            ));
        }
        let regions = self.archive_regions(cluster)?;
        let agent = self.archive_agent(cluster, &r.agent)?;
        let task = FindTask {
            cluster: cluster_id,
            regions,
            shard: (!r.shard.is_empty()).then(|| r.shard.clone()),
            commands: r
                .commands
                .iter()
                .map(|c| fleetsnap_core::archive::command_name(c))
                .collect::<Result<_, _>>()
                .map_err(LeaderError::invalid)?,
            key: (!r.key.is_empty()).then(|| r.key.clone()),
            since_ms: r.since_ms,
            until_ms: until,
        };
        let job = self
            .catalog_job(
                agent.clone(),
                CatalogSpec {
                    task: CatalogTask::Find(Box::new(task)),
                    set: None,
                    reason: format!("archive find in cluster {cluster} asked by an operator"),
                    drill_of: None,
                    trace: fleetsnap_telemetry::trace::traceparent(&tracing::Span::current()),
                },
            )
            .await?;
        Ok(super::restore::Started {
            jobs: vec![job],
            set: format!("{cluster} (archive)"),
            agents: vec![agent],
        })
    }

    /// `fleetsnap restore --at T [--exact] | --before …` of an archived cluster: one job for an
    /// online restore (every shard, or one), one per shard's primary for a replace.
    pub(super) async fn restore_at(
        &self,
        r: &v1::RestoreRequest,
    ) -> Result<super::restore::Started, LeaderError> {
        use fleetsnap_core::report::Role;
        use fleetsnap_core::window::{CatalogTask, RestoreAtTask, RestoreMode};
        let cluster = r.cluster.trim();
        if cluster.is_empty() || !r.set.trim().is_empty() {
            return Err(LeaderError::invalid(
                "a restore to a time from the archive names the cluster (--cluster C), not a set",
            ));
        }
        let shard = (!r.shard.is_empty()).then(|| r.shard.clone());
        let task = |shard: Option<String>, mode: RestoreMode| {
            self.restore_at_task(cluster, r.at_ms, r.exact, &r.before, mode)
                .map(|t| RestoreAtTask {
                    shard,
                    db: r.db,
                    pattern: (!r.pattern.is_empty()).then(|| r.pattern.clone()),
                    ..t
                })
        };
        let spec = |task: RestoreAtTask| CatalogSpec {
            task: CatalogTask::RestoreAt(Box::new(task)),
            set: None,
            reason: format!("restore of cluster {cluster} from its archive asked by an operator"),
            drill_of: None,
            trace: fleetsnap_telemetry::trace::traceparent(&tracing::Span::current()),
        };
        let mut started = super::restore::Started {
            jobs: Vec::new(),
            set: format!("{cluster} (archive)"),
            agents: Vec::new(),
        };
        match r.mode.as_str() {
            "online" => {
                if r.target.is_empty() {
                    return Err(LeaderError::invalid(
                        "an online restore needs --target redis://HOST:PORT",
                    ));
                }
                super::restore::no_password_in(&r.target)?;
                let task = task(
                    shard,
                    RestoreMode::Online {
                        target: r.target.clone(),
                        replace_existing: r.replace_existing,
                    },
                )?;
                let agent = self.archive_agent(cluster, &r.agent)?;
                let job = self.catalog_job(agent.clone(), spec(task)).await?;
                started.jobs.push(job);
                started.agents.push(agent);
            }
            "replace" => {
                if r.db.is_some() || !r.pattern.is_empty() {
                    return Err(LeaderError::invalid(
                        "a replace restore puts whole shards back: --db and --match apply to --mode online",
                    ));
                }
                let jobs: Vec<Job> = {
                    let s = self.state.read().expect("state lock");
                    s.state
                        .jobs
                        .values()
                        .filter(|j| self::spec(j).is_some())
                        .cloned()
                        .collect()
                };
                let view = self.view(cluster);
                let mut plan = Vec::new();
                for s in view
                    .clusters
                    .iter()
                    .flat_map(|c| c.shards.iter())
                    .filter(|s| s.id != "unreachable" && s.id != "unattached")
                {
                    let name = archive_name(&jobs, cluster, s);
                    if shard.as_ref().is_some_and(|x| *x != name) {
                        continue;
                    }
                    let primary = s
                        .nodes
                        .iter()
                        .find(|n| n.role == Role::Primary && n.reachable)
                        .ok_or_else(|| {
                            LeaderError::refused(format!(
                                "shard {name} of cluster {cluster} has no primary an agent reaches now; restore it with --mode online into a running target instead"
                            ))
                        })?;
                    plan.push((name, primary.agent.clone(), primary.name.clone()));
                }
                if plan.is_empty() {
                    return Err(LeaderError::not_found(format!(
                        "cluster {cluster} has no shard{} an agent reports now",
                        shard.as_ref().map(|s| format!(" {s}")).unwrap_or_default()
                    )));
                }
                for (name, agent, instance) in plan {
                    let task = task(Some(name), RestoreMode::Replace { instance })?;
                    let job = self.catalog_job(agent.clone(), spec(task)).await?;
                    started.jobs.push(job);
                    started.agents.push(agent);
                }
            }
            other => {
                return Err(LeaderError::invalid(format!(
                    "--mode {other:?}: use online (into a running target) or replace (the cluster's own nodes)"
                )));
            }
        }
        Ok(started)
    }
}

fn stop_message(job_id: u64, reason: String) -> v1::CoordinatorMessage {
    v1::CoordinatorMessage {
        body: Some(coordinator_message::Body::StopJob(v1::StopJob {
            job_id,
            reason,
        })),
    }
}
