//! `fleetsnap-agent run --config FILE`: watch the Redis instances of this host, report them to the
//! coordinator leader every second over one long-lived gRPC stream, and run the jobs it sends.
//!
//! The agent follows the leader: a follower answers with a `Redirect` and the agent reconnects
//! there; a lost stream sends it through the coordinator list with a short, capped, jittered
//! backoff. Jobs are fenced: one whose term is older than the newest term the agent has seen is
//! refused, and a job id is run at most once per agent process.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetsnap_core::codec::Compression;
use fleetsnap_core::window::{JobResult, RegionResult, RegionUrl, ShardResult};
use fleetsnap_core::{ClusterId, InstanceReport, ShardId};
use fleetsnap_proto::tls::{Role, TlsFiles, Transport};
use fleetsnap_proto::v1::agent_service_client::AgentServiceClient;
use fleetsnap_proto::v1::{self, agent_message, coordinator_message, job_update};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::cut::CutBook;
use crate::dest::DestSpec;
use crate::error::{Error, Result};
use crate::pipeline::{EncodeOptions, Progress, parse_recipient};
use crate::snapshot::{self, SnapshotRequest};
use crate::source::{SourceKind, SourceOptions};
use crate::spool::SpoolLimits;
use crate::target::RedisTarget;
use fleetsnap_telemetry::metrics::{Exposition, Kind as MetricKind, Registry};
use tracing::Instrument;

const REPORTS_SENT: &str = "fleetsnap_agent_reports_sent_total";
const LAST_REPORT: &str = "fleetsnap_agent_last_report_timestamp_seconds";
const CONNECTED: &str = "fleetsnap_agent_coordinator_connected";
const INSTANCE_UP: &str = "fleetsnap_agent_instance_up";
const JOBS: &str = "fleetsnap_agent_jobs_total";
const JOB_SECONDS: &str = "fleetsnap_agent_job_duration_seconds";
const UPLOADED: &str = "fleetsnap_agent_uploaded_bytes_total";
const UPLOAD_SECONDS: &str = "fleetsnap_agent_upload_duration_seconds";
const SOURCE_BYTES: &str = "fleetsnap_agent_source_bytes_total";
const UPLOAD_FAILURES: &str = "fleetsnap_agent_upload_failures_total";

/// Every metric the agent exports, with its type and help: described at start, so a scrape
/// lists each family before its first sample.
const METRICS: [(&str, MetricKind, &str); 10] = [
    (
        REPORTS_SENT,
        MetricKind::Counter,
        "Reports sent to the leader.",
    ),
    (
        LAST_REPORT,
        MetricKind::Gauge,
        "When the last report went to the leader (Unix time).",
    ),
    (
        CONNECTED,
        MetricKind::Gauge,
        "1 while a session with the coordinator leader is open, else 0.",
    ),
    (
        INSTANCE_UP,
        MetricKind::Gauge,
        "1 when the Redis instance answered the last poll, else 0.",
    ),
    (
        JOBS,
        MetricKind::Counter,
        "Jobs this agent ran, by kind and outcome.",
    ),
    (
        JOB_SECONDS,
        MetricKind::Gauge,
        "How long the last job of each kind took.",
    ),
    (
        UPLOADED,
        MetricKind::Counter,
        "Bytes stored in regions by snapshots, by cluster, shard and region.",
    ),
    (
        UPLOAD_SECONDS,
        MetricKind::Gauge,
        "How long the last snapshot of a shard took to reach a region, by cluster, shard and region.",
    ),
    (
        SOURCE_BYTES,
        MetricKind::Counter,
        "Bytes read from sources for snapshots, by cluster and shard.",
    ),
    (
        UPLOAD_FAILURES,
        MetricKind::Counter,
        "Snapshots a region did not take, by cluster, shard and region.",
    ),
];

impl Shared {
    fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::SeqCst);
        self.metrics.set(CONNECTED, &[], f64::from(u8::from(up)));
    }

    fn metrics_text(&self) -> String {
        let mut e = Exposition::default();
        self.metrics.render(&mut e);
        e.finish()
    }

    /// Counts a snapshot's bytes and times per region (`regions`: the policy's names, in the
    /// order of the destinations; without them, the destinations' own).
    fn count_snapshot(&self, report: &snapshot::SnapshotReport, regions: &[String]) {
        let (cluster, shard) = (report.cluster.as_str(), report.shard.as_str());
        self.metrics.add(
            SOURCE_BYTES,
            &[("cluster", cluster), ("shard", shard)],
            report.raw_bytes as f64,
        );
        for (i, d) in report.destinations.iter().enumerate() {
            let region = regions.get(i).unwrap_or(&d.region);
            let labels = [
                ("cluster", cluster),
                ("shard", shard),
                ("region", region.as_str()),
            ];
            if d.error.is_some() {
                self.metrics.add(UPLOAD_FAILURES, &labels, 1.0);
                continue;
            }
            self.metrics.add(UPLOADED, &labels, d.stored_bytes as f64);
            self.metrics
                .set(UPLOAD_SECONDS, &labels, d.duration_seconds);
        }
    }
}

/// A job's kind, for its span and metrics: `snapshot`, `manifest`, or the catalog task's.
fn job_kind(job: &v1::Job) -> &'static str {
    match &job.kind {
        Some(v1::job::Kind::Snapshot(_)) => "snapshot",
        Some(v1::job::Kind::Manifest(_)) => "manifest",
        Some(v1::job::Kind::Catalog(c)) => {
            match serde_json::from_str::<fleetsnap_core::window::CatalogTask>(&c.task_json) {
                Ok(fleetsnap_core::window::CatalogTask::Restore(r))
                    if r.mode == fleetsnap_core::window::RestoreMode::Drill =>
                {
                    "drill"
                }
                Ok(fleetsnap_core::window::CatalogTask::Restore(_)) => "restore",
                Ok(fleetsnap_core::window::CatalogTask::Node(_))
                | Ok(fleetsnap_core::window::CatalogTask::Probe(_)) => "runbook_step",
                Ok(_) => "catalog",
                Err(_) => "unknown",
            }
        }
        None => "unknown",
    }
}

/// The agent's config file (TOML). Unknown keys are errors.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This agent's id; its certificate must name the same.
    pub agent_id: String,
    /// Coordinator addresses (`host:port`); any one of them leads the agent to the leader.
    pub coordinators: Vec<String>,
    /// Certificates; required unless the agent runs with `--insecure`. `{agent_id}` in a path
    /// stands for the agent id (one Secret holding every agent's files, on Kubernetes).
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// The local address the agent connects to coordinators from (default: the system's
    /// choice). Coordinators limit unfinished handshakes per peer address; on a host with
    /// several addresses, this says which one the agent is.
    #[serde(default)]
    pub source_address: Option<std::net::IpAddr>,
    /// Milliseconds between two reports.
    #[serde(default = "default_report_interval")]
    pub report_interval_ms: u64,
    /// The Redis instances on this host.
    #[serde(default, rename = "instance")]
    pub instances: Vec<InstanceConfig>,
    /// Snapshot job settings.
    #[serde(default)]
    pub snapshot: SnapshotSettings,
    /// Restore job settings.
    #[serde(default)]
    pub restore: RestoreSettings,
    /// Restore drills: present, this agent runs them in scratch servers it starts.
    #[serde(default)]
    pub drill: Option<crate::drill::DrillSettings>,
    /// Traces and the metrics endpoint.
    #[serde(default)]
    pub telemetry: fleetsnap_telemetry::TelemetryConfig,
}

/// Restore job settings.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestoreSettings {
    /// Scratch space for online restores (default: the system's temporary directory).
    pub work_dir: Option<PathBuf>,
    /// age identity file, for sets encrypted to this agent's recipient.
    pub identity: Option<PathBuf>,
}

fn default_report_interval() -> u64 {
    1000
}

/// One watched instance.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// Its name in reports, jobs and the fleet view.
    pub name: String,
    /// `redis://[USER[:PASSWORD]@]HOST:PORT` (or `?password_file=PATH`, or rediss://…).
    pub url: String,
    /// The cluster it belongs to in the fleet view and the storage layout.
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// Its availability zone, for policies that prefer some zones (optional).
    #[serde(default)]
    pub zone: String,
    /// Shell command that starts it and returns (`systemctl start redis@6379`): needed by
    /// `replace` restores, which stop it, place the backup and start it.
    #[serde(default)]
    pub start_command: Option<String>,
    /// Shell command that stops it (default: `SHUTDOWN NOSAVE` sent to it).
    #[serde(default)]
    pub stop_command: Option<String>,
    /// Its data file, for when it is down and cannot say (default: `CONFIG GET dir dbfilename`).
    #[serde(default)]
    pub rdb_path: Option<PathBuf>,
    /// Seconds the stop, and then the start and load, may take.
    #[serde(default = "default_restore_timeout")]
    pub restore_timeout_seconds: u64,
    /// A Sentinel that monitors its replica set: `redis://HOST:PORT` (with
    /// `sentinel_master`). A failover runbook then promotes through `SENTINEL FAILOVER`.
    #[serde(default)]
    pub sentinel: Option<String>,
    /// The name the Sentinel monitors the set under.
    #[serde(default)]
    pub sentinel_master: Option<String>,
}

fn default_restore_timeout() -> u64 {
    600
}

fn default_cluster() -> String {
    "default".into()
}

/// Snapshot job settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotSettings {
    /// Spool directory for destinations slower than the source.
    pub spool_dir: Option<PathBuf>,
    /// Largest spool file per destination.
    pub spool_max: String,
    /// Seconds a node may send nothing before a snapshot fails.
    pub idle_timeout_seconds: u64,
}

impl Default for SnapshotSettings {
    fn default() -> Self {
        Self {
            spool_dir: None,
            spool_max: "8GiB".into(),
            idle_timeout_seconds: 60,
        }
    }
}

struct Instance {
    config: InstanceConfig,
    target: RedisTarget,
}

impl AgentConfig {
    /// Reads and checks the config file.
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_as(path, None)
    }

    /// Reads and checks the config file of agent `agent_id` (given, it replaces the file's),
    /// with `{agent_id}` in certificate paths replaced.
    pub fn load_as(path: &Path, agent_id: Option<String>) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::file("cannot read the config file", path, e))?;
        let mut c: AgentConfig = toml::from_str(&text)
            .map_err(|e| Error::Input(format!("config file {}: {e}", path.display())))?;
        if let Some(id) = agent_id {
            c.agent_id = id;
        }
        c.tls = c.tls.map(|t| t.with("{agent_id}", &c.agent_id));
        let bad = |m: String| Error::Input(format!("config file {}: {m}", path.display()));
        if c.coordinators.is_empty() {
            return Err(bad(
                "coordinators is empty: list at least one coordinator address".into(),
            ));
        }
        c.telemetry.check().map_err(bad)?;
        if c.report_interval_ms == 0 {
            return Err(bad("report_interval_ms must be 1 or more".into()));
        }
        crate::cli::parse_size(&c.snapshot.spool_max)
            .map_err(|e| bad(format!("[snapshot] spool_max: {e}")))?;
        if c.snapshot.idle_timeout_seconds == 0 {
            return Err(bad(
                "[snapshot] idle_timeout_seconds must be 1 or more".into()
            ));
        }
        let mut names = HashSet::new();
        for i in &c.instances {
            fleetsnap_core::ids::check_name("instance name", &i.name)
                .map_err(|e| bad(e.to_string()))?;
            ClusterId::new(&i.cluster).map_err(|e| bad(format!("instance {:?}: {e}", i.name)))?;
            if !names.insert(&i.name) {
                return Err(bad(format!("two instances are named {:?}", i.name)));
            }
            RedisTarget::parse(&i.url).map_err(|e| bad(format!("instance {:?}: {e}", i.name)))?;
            match (&i.sentinel, &i.sentinel_master) {
                (Some(url), Some(_)) => {
                    RedisTarget::parse(url)
                        .map_err(|e| bad(format!("instance {:?}: sentinel: {e}", i.name)))?;
                }
                (None, None) => {}
                _ => {
                    return Err(bad(format!(
                        "instance {:?}: give sentinel and sentinel_master together (the Sentinel's redis://HOST:PORT and the name it monitors the set under)",
                        i.name
                    )));
                }
            }
        }
        Ok(c)
    }
}

/// What `check-config` checks beyond [`AgentConfig::load`]: the certificates (unless
/// `insecure`), as `run` would use them.
pub fn check(config: &AgentConfig, insecure: bool) -> Result<()> {
    if !insecure {
        transport(config, false)?;
    }
    let dirs = [
        (&config.snapshot.spool_dir, "[snapshot] spool_dir"),
        (&config.restore.work_dir, "[restore] work_dir"),
    ];
    for (dir, what) in dirs {
        if let Some(d) = dir {
            fleetsnap_proto::host::check_writable_dir(d, what).map_err(Error::Input)?;
        }
    }
    if let Some(id) = &config.restore.identity {
        crate::restore::load_identities(id)?;
    }
    Ok(())
}

/// Builds the transport from the config, checking that the certificate is this agent's.
pub fn transport(config: &AgentConfig, insecure: bool) -> Result<Transport> {
    if insecure {
        tracing::warn!(
            "--insecure: talking to coordinators in plain text without certificates; use it \
             only on a test machine"
        );
        return Ok(Transport::Insecure);
    }
    let files = config.tls.as_ref().ok_or_else(|| {
        Error::Input(
            "the config has no [tls] section: add ca, cert and key (a test fleet's come from \
             `fleetsnap certs init`), or run with --insecure on a test machine"
                .into(),
        )
    })?;
    let loaded = files.load().map_err(Error::Input)?;
    if loaded.identity.role != Role::Agent || loaded.identity.name != config.agent_id {
        return Err(Error::Input(format!(
            "the certificate {} names {}, but this agent is {:?}: give it the agent \
             certificate made for it (`fleetsnap certs init --agents {}`)",
            files.cert.display(),
            loaded.identity,
            config.agent_id,
            config.agent_id
        )));
    }
    Ok(Transport::Tls(loaded))
}

/// What the agent knows across sessions.
struct Shared {
    config: AgentConfig,
    instances: Vec<Instance>,
    transport: Transport,
    incarnation: u64,
    newest_term: AtomicU64,
    /// The coordinator cluster `newest_term` was seen in ("" before the first welcome).
    cluster_id: Mutex<String>,
    jobs: Mutex<JobBook>,
    /// The coordinator of the last lost session (0: none).
    last_leader: AtomicU64,
    /// A job ended: the current session sends its result.
    job_ended: tokio::sync::Notify,
    reports: watch::Receiver<Vec<InstanceReport>>,
    /// One channel per coordinator address, kept for the life of the process. Spare ones are
    /// kept up by [`standby_loop`]: when the leader dies, the agent reaches the next one over a
    /// connection whose TLS handshake is long done, instead of adding its own to a storm of them.
    channels: Mutex<HashMap<String, Channel>>,
    standby_started: AtomicBool,
    /// Consistent cuts in progress.
    cuts: CutBook,
    /// A cut's snapshot job announced its RDB: the current session says so.
    synced_ready: tokio::sync::Notify,
    /// What `/metrics` shows.
    metrics: Registry,
    /// Whether a session with the leader is open (`/readyz`).
    connected: AtomicBool,
}

/// `d` give or take a quarter: jitter spreads thousands of agents over a period instead of one
/// burst.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::random::<f64>() * 0.5 + 0.75)
}

/// How often the spare connections are used, so that they stay up.
const STANDBY_EVERY: Duration = Duration::from_secs(30);

#[derive(Default)]
struct JobBook {
    /// Every job id this process accepted: it never runs one twice.
    seen: HashSet<u64>,
    running: HashSet<u64>,
    /// The latest results, repeated in every Hello: the leader ignores ones it already has.
    finished: VecDeque<v1::JobUpdate>,
}

const KEEP_FINISHED: usize = 64;

/// Runs the agent until the process is stopped: polls its instances and reports them.
pub async fn run(config: AgentConfig, transport: Transport) -> Result<()> {
    let (reports_tx, reports) = watch::channel(Vec::new());
    let shared = shared(config, transport, reports)?;
    if let Some(address) = shared.config.telemetry.metrics_listen {
        let (metrics, ready) = (shared.clone(), shared.clone());
        fleetsnap_telemetry::http::start(
            address,
            fleetsnap_telemetry::http::Probes {
                metrics: Arc::new(move || metrics.metrics_text()),
                healthy: Arc::new(|| Ok(())),
                ready: Arc::new(move || {
                    if ready.connected.load(Ordering::SeqCst) {
                        Ok(())
                    } else {
                        Err("no session with a coordinator leader".into())
                    }
                }),
            },
        )
        .await
        .map_err(|e| Error::Input(e.to_string()))?;
    }
    tokio::spawn(collect_loop(shared.clone(), reports_tx));
    connect_loop(shared).await;
    Ok(())
}

/// Runs the agent's coordinator side (sessions, redirects, jobs) with reports that come from
/// elsewhere instead of from polling Redis: the control-plane simulator runs thousands of these.
pub async fn run_with_reports(
    config: AgentConfig,
    transport: Transport,
    reports: watch::Receiver<Vec<InstanceReport>>,
) -> Result<()> {
    connect_loop(shared(config, transport, reports)?).await;
    Ok(())
}

fn shared(
    config: AgentConfig,
    transport: Transport,
    reports: watch::Receiver<Vec<InstanceReport>>,
) -> Result<Arc<Shared>> {
    let instances = config
        .instances
        .iter()
        .map(|c| {
            Ok(Instance {
                config: c.clone(),
                target: RedisTarget::parse(&c.url)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Arc::new(Shared {
        incarnation: rand::random(),
        config,
        instances,
        transport,
        newest_term: AtomicU64::new(0),
        cluster_id: Mutex::new(String::new()),
        jobs: Mutex::new(JobBook::default()),
        last_leader: AtomicU64::new(0),
        job_ended: tokio::sync::Notify::new(),
        reports,
        channels: Mutex::new(HashMap::new()),
        standby_started: AtomicBool::new(false),
        cuts: CutBook::default(),
        synced_ready: tokio::sync::Notify::new(),
        metrics: {
            let r = Registry::default();
            for (name, kind, help) in METRICS {
                r.describe(name, kind, help);
            }
            r
        },
        connected: AtomicBool::new(false),
    }))
}

/// Polls every instance once per interval, all at once, each bounded in time.
async fn collect_loop(shared: Arc<Shared>, tx: watch::Sender<Vec<InstanceReport>>) {
    let interval = Duration::from_millis(shared.config.report_interval_ms);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let available = host_memory_available();
        let handles: Vec<_> = shared
            .instances
            .iter()
            .map(|i| {
                let (name, target, cluster, zone) = (
                    i.config.name.clone(),
                    i.target.clone(),
                    i.config.cluster.clone(),
                    i.config.zone.clone(),
                );
                let sentinel_master = i.config.sentinel_master.clone().unwrap_or_default();
                tokio::spawn(async move {
                    let mut r = match tokio::time::timeout(
                        interval.max(Duration::from_secs(2)),
                        crate::watch::collect(&name, &target),
                    )
                    .await
                    {
                        Ok(r) => r,
                        Err(_) => InstanceReport::unreachable(
                            &name,
                            &target.address(),
                            "no answer to INFO within the report interval".into(),
                        ),
                    };
                    r.cluster = cluster;
                    r.zone = zone;
                    r.sentinel_master = sentinel_master;
                    r.host_memory_available_bytes = available;
                    r
                })
            })
            .collect();
        let mut reports = Vec::with_capacity(handles.len());
        for h in handles {
            if let Ok(r) = h.await {
                shared.metrics.set(
                    INSTANCE_UP,
                    &[("redis_instance", r.name.as_str())],
                    f64::from(u8::from(r.reachable)),
                );
                reports.push(r);
            }
        }
        if tx.send(reports).is_err() {
            return;
        }
    }
}

/// `MemAvailable` from `/proc/meminfo`, in bytes; `None` where there is no such file.
fn host_memory_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

enum Ended {
    /// Go to this leader now.
    Redirect(String),
    /// No leader known yet; back off.
    NoLeader,
    /// The stream failed; `welcomed` says whether it had been a working session.
    Lost { welcomed: bool, why: String },
}

async fn connect_loop(shared: Arc<Shared>) {
    let coordinators = shared.config.coordinators.clone();
    let mut next = 0usize;
    let mut target: Option<String> = None;
    let mut lost: Option<String> = None;
    // Short first retries: after a leader dies, followers know the new leader about one
    // election timeout later. Capped low so that re-homing never waits long on one backoff.
    let base = Duration::from_millis(150);
    let mut backoff = base;
    let max_backoff = Duration::from_secs(1);
    loop {
        let address = target.take().unwrap_or_else(|| {
            let mut a = coordinators[next % coordinators.len()].clone();
            next += 1;
            if Some(&a) == lost.as_ref() && coordinators.len() > 1 {
                // Not straight back to the coordinator that just went away.
                a = coordinators[next % coordinators.len()].clone();
                next += 1;
            }
            a
        });
        lost = None;
        let ended = session(&shared, &address).await;
        shared.set_connected(false);
        match ended {
            Ended::Redirect(leader) => {
                tracing::info!(from = %address, to = %leader, "following the leader");
                target = Some(leader);
                continue;
            }
            Ended::Lost {
                welcomed: true,
                why,
            } => {
                tracing::warn!(coordinator = %address, %why, "lost the leader; looking for the new one");
                backoff = base;
                lost = Some(address);
                continue;
            }
            Ended::Lost {
                welcomed: false,
                why,
            } => {
                tracing::warn!(coordinator = %address, %why, "no session");
            }
            Ended::NoLeader => {
                tracing::info!(coordinator = %address, "no leader yet");
            }
        }
        tokio::time::sleep(jittered(backoff)).await;
        backoff = backoff.mul_f64(1.5).min(max_backoff);
    }
}

/// The channel to `address`: the kept one, or a new connection that is then kept. A kept channel
/// whose connection broke reconnects on its next use.
async fn channel(shared: &Shared, address: &str) -> std::result::Result<Channel, String> {
    if let Some(c) = shared.channels.lock().expect("channels lock").get(address) {
        return Ok(c.clone());
    }
    // Spare connections are idle between standby calls: no keepalive pings while idle, the
    // session's stream brings them back when it runs.
    let c = shared
        .transport
        .endpoint(address)?
        .keep_alive_while_idle(false)
        .local_address(shared.config.source_address)
        .connect()
        .await
        .map_err(|e| fleetsnap_proto::tls::connect_error(address, &e))?;
    Ok(shared
        .channels
        .lock()
        .expect("channels lock")
        .entry(address.to_string())
        .or_insert(c)
        .clone())
}

/// Keeps a connection to every configured coordinator up: one small call on each every
/// [`STANDBY_EVERY`] (jittered), which also reconnects one that broke, say after that
/// coordinator restarted. Started after the first session, its first round spread over a third
/// of the period so that a fleet starting together does not handshake together.
async fn standby_loop(shared: Arc<Shared>) {
    tokio::time::sleep(STANDBY_EVERY.mul_f64(rand::random::<f64>() / 3.0)).await;
    loop {
        for address in &shared.config.coordinators {
            match channel(&shared, address).await {
                Ok(ch) => {
                    let mut client = AgentServiceClient::new(ch);
                    let call = client.standby(v1::StandbyRequest {
                        agent_id: shared.config.agent_id.clone(),
                    });
                    match tokio::time::timeout(Duration::from_secs(5), call).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(s)) => {
                            tracing::debug!(why = %status_text(address, &s), "spare connection")
                        }
                        Err(_) => tracing::debug!(%address, "spare connection: no answer in 5 s"),
                    }
                }
                Err(why) => tracing::debug!(%why, "spare connection"),
            }
        }
        tokio::time::sleep(jittered(STANDBY_EVERY)).await;
    }
}

/// The most result bytes a Hello carries: the rest are sent once welcomed, so a Hello never
/// nears gRPC's message limit however many large results wait.
const HELLO_RESULT_BYTES: usize = 2 << 20;

fn hello(shared: &Shared) -> v1::AgentMessage {
    let book = shared.jobs.lock().expect("jobs lock");
    let mut room = HELLO_RESULT_BYTES;
    let (carried, later): (Vec<&v1::JobUpdate>, Vec<&v1::JobUpdate>) =
        book.finished.iter().partition(|u| {
            let size = match &u.state {
                Some(job_update::State::Finished(f)) => f.result_json.len() + f.error.len(),
                _ => 0,
            };
            let fits = fits_whole(u) && size <= room;
            if fits {
                room -= size;
            }
            fits
        });
    v1::AgentMessage {
        body: Some(agent_message::Body::Hello(v1::Hello {
            agent_id: shared.config.agent_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            newest_term_seen: shared.newest_term.load(Ordering::SeqCst),
            incarnation: shared.incarnation,
            // Results that do not fit go after the welcome (a large one in parts): those jobs
            // are said to be running until then.
            running_jobs: book
                .running
                .iter()
                .copied()
                .chain(later.iter().map(|u| u.job_id))
                .collect(),
            finished_jobs: carried.into_iter().cloned().collect(),
            last_leader_id: shared.last_leader.load(Ordering::SeqCst),
            drills: shared.config.drill.is_some(),
            cluster_id: shared.cluster_id.lock().expect("cluster id lock").clone(),
        })),
    }
}

async fn session(shared: &Arc<Shared>, address: &str) -> Ended {
    let lost = |why: String| Ended::Lost {
        welcomed: false,
        why,
    };
    let channel = match channel(shared, address).await {
        Ok(c) => c,
        Err(e) => return lost(e),
    };
    let (up, up_rx) = mpsc::channel::<v1::AgentMessage>(64);
    let hello = hello(shared);
    // The results this Hello carries. A job that ends after it is built, while the coordinator
    // holds the Hello (a new leader waits for its election to settle), is sent once welcomed.
    let mut results_sent: HashSet<u64> = match &hello.body {
        Some(agent_message::Body::Hello(h)) => h.finished_jobs.iter().map(|u| u.job_id).collect(),
        _ => HashSet::new(),
    };
    if up.send(hello).await.is_err() {
        return lost("stream closed".into());
    }
    let mut client = AgentServiceClient::new(channel);
    let mut down = match client.session(ReceiverStream::new(up_rx)).await {
        Ok(r) => r.into_inner(),
        Err(s) => return lost(status_text(address, &s)),
    };
    // The first answer: a welcome, or the way to the leader.
    match tokio::time::timeout(Duration::from_secs(10), down.message()).await {
        Ok(Ok(Some(v1::CoordinatorMessage { body: Some(body) }))) => match body {
            coordinator_message::Body::Welcome(w) => {
                let rebuilt = {
                    let mut known = shared.cluster_id.lock().expect("cluster id lock");
                    let rebuilt =
                        !known.is_empty() && !w.cluster_id.is_empty() && *known != w.cluster_id;
                    if !w.cluster_id.is_empty() {
                        *known = w.cluster_id.clone();
                    }
                    rebuilt
                };
                if rebuilt {
                    // A coordinator cluster built anew counts its terms from 1: the fence starts
                    // again with it.
                    tracing::warn!(cluster = %w.cluster_id, term = w.term, "a new coordinator cluster; its terms replace the old one's");
                    shared.newest_term.store(w.term, Ordering::SeqCst);
                }
                shared.newest_term.fetch_max(w.term, Ordering::SeqCst);
                shared.last_leader.store(w.coordinator_id, Ordering::SeqCst);
                shared.set_connected(true);
                tracing::info!(coordinator = w.coordinator_id, term = w.term, %address, "reporting to the leader");
                if !shared.standby_started.swap(true, Ordering::SeqCst) {
                    tokio::spawn(standby_loop(shared.clone()));
                }
            }
            coordinator_message::Body::Redirect(r) if !r.leader_address.is_empty() => {
                return Ended::Redirect(r.leader_address);
            }
            coordinator_message::Body::Redirect(_) => return Ended::NoLeader,
            coordinator_message::Body::Job(_)
            | coordinator_message::Body::CutStep(_)
            | coordinator_message::Body::CutDecision(_) => {
                return lost("a job before the welcome".into());
            }
        },
        Ok(Ok(_)) => return lost("the coordinator closed the stream".into()),
        Ok(Err(s)) => return lost(status_text(address, &s)),
        Err(_) => return lost("no answer to Hello within 10 s".into()),
    }
    let welcomed = |why: String| Ended::Lost {
        welcomed: true,
        why,
    };
    // Results not in the Hello go now; later ones as jobs end, whichever session runs then.
    if send_unsent(shared, &up, &mut results_sent).await.is_err() {
        return welcomed("stream closed".into());
    }
    let interval = Duration::from_millis(shared.config.report_interval_ms);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sequence = 0u64;
    // A new leader may not have committed what the last one heard: say it again.
    let mut synced_sent: HashSet<u64> = HashSet::new();
    for s in shared.cuts.all_synced() {
        synced_sent.insert(s.job_id);
        if up.send(synced_message(s)).await.is_err() {
            return welcomed("stream closed".into());
        }
    }
    loop {
        tokio::select! {
            _ = tick.tick() => {
                sequence += 1;
                let instances = shared.reports.borrow().iter().map(v1::InstanceReport::from).collect();
                let report = v1::AgentMessage {
                    body: Some(agent_message::Body::Report(v1::Report {
                        sequence,
                        sent_at_unix_us: fleetsnap_proto::convert::unix_micros(),
                        instances,
                    })),
                };
                if up.send(report).await.is_err() {
                    return welcomed("stream closed".into());
                }
                shared.metrics.add(REPORTS_SENT, &[], 1.0);
                shared.metrics.set(
                    LAST_REPORT,
                    &[],
                    fleetsnap_telemetry::metrics::unix_seconds(fleetsnap_core::window::unix_ms(
                        time::OffsetDateTime::now_utc(),
                    )),
                );
            }
            _ = shared.job_ended.notified() => {
                if send_unsent(shared, &up, &mut results_sent).await.is_err() {
                    return welcomed("stream closed".into());
                }
            }
            _ = shared.synced_ready.notified() => {
                for s in shared.cuts.all_synced() {
                    if synced_sent.insert(s.job_id) && up.send(synced_message(s)).await.is_err() {
                        return welcomed("stream closed".into());
                    }
                }
            }
            msg = down.message() => match msg {
                Ok(Some(v1::CoordinatorMessage { body: Some(coordinator_message::Body::CutStep(step)) })) => {
                    let (shared, up) = (shared.clone(), up.clone());
                    tokio::spawn(async move {
                        let target = shared
                            .instances
                            .iter()
                            .find(|i| i.config.name == step.instance)
                            .map(|i| i.target.clone());
                        let reply = shared.cuts.step(step, target.as_ref()).await;
                        let _ = up
                            .send(v1::AgentMessage {
                                body: Some(agent_message::Body::CutReply(reply)),
                            })
                            .await;
                    });
                }
                Ok(Some(v1::CoordinatorMessage { body: Some(coordinator_message::Body::CutDecision(d)) })) => {
                    shared.cuts.decide(d);
                }
                Ok(Some(v1::CoordinatorMessage { body: Some(coordinator_message::Body::Job(job)) })) => {
                    if let Some(u) = take_job(shared, job)
                        && send_update(&up, u).await.is_err()
                    {
                        return welcomed("stream closed".into());
                    }
                }
                Ok(Some(v1::CoordinatorMessage { body: Some(coordinator_message::Body::Redirect(r)) })) => {
                    return if r.leader_address.is_empty() { Ended::NoLeader } else { Ended::Redirect(r.leader_address) };
                }
                Ok(Some(_)) => {}
                Ok(None) => return welcomed("the coordinator closed the stream".into()),
                Err(s) => return welcomed(status_text(address, &s)),
            }
        }
    }
}

fn synced_message(s: v1::Synced) -> v1::AgentMessage {
    v1::AgentMessage {
        body: Some(agent_message::Body::Synced(s)),
    }
}

fn status_text(address: &str, s: &tonic::Status) -> String {
    let source = std::error::Error::source(s)
        .map(|e| format!(" ({})", fleetsnap_proto::tls::describe(e)))
        .unwrap_or_default();
    format!("coordinator {address}: {}{source}", s.message())
}

/// The fence: a job created or dispatched in a term older than the newest term this agent has
/// seen comes from a deposed leader.
fn fence(job: u64, term: u64, newest: u64) -> std::result::Result<(), String> {
    if term < newest {
        return Err(format!(
            "job {job} carries term {term} but this agent has seen term {newest}: it comes \
             from a deposed leader"
        ));
    }
    Ok(())
}

/// The most bytes of a result sent in one message; a longer one goes in parts of this size,
/// well inside gRPC's 4 MiB message limit.
const RESULT_PART_BYTES: usize = 1 << 20;

/// Whether an update goes as one message (and so may ride in a Hello).
fn fits_whole(u: &v1::JobUpdate) -> bool {
    match &u.state {
        Some(job_update::State::Finished(f)) => f.result_json.len() <= RESULT_PART_BYTES,
        _ => true,
    }
}

/// An update as the messages that carry it: a large result as its parts, then the `Finished`
/// that names how many there were.
fn split_update(u: v1::JobUpdate) -> Vec<v1::JobUpdate> {
    let (job_id, term) = (u.job_id, u.term);
    match u.state {
        Some(job_update::State::Finished(mut f)) if f.result_json.len() > RESULT_PART_BYTES => {
            let bytes = std::mem::take(&mut f.result_json).into_bytes();
            let mut out: Vec<v1::JobUpdate> = bytes
                .chunks(RESULT_PART_BYTES)
                .enumerate()
                .map(|(seq, data)| v1::JobUpdate {
                    job_id,
                    term,
                    state: Some(job_update::State::Part(v1::ResultPart {
                        seq: seq as u32,
                        data: data.to_vec(),
                    })),
                })
                .collect();
            f.result_parts = out.len() as u32;
            out.push(v1::JobUpdate {
                job_id,
                term,
                state: Some(job_update::State::Finished(f)),
            });
            out
        }
        state => vec![v1::JobUpdate {
            job_id,
            term,
            state,
        }],
    }
}

async fn send_update(
    up: &mpsc::Sender<v1::AgentMessage>,
    u: v1::JobUpdate,
) -> std::result::Result<(), mpsc::error::SendError<v1::AgentMessage>> {
    for piece in split_update(u) {
        up.send(v1::AgentMessage {
            body: Some(agent_message::Body::JobUpdate(piece)),
        })
        .await?;
    }
    Ok(())
}

/// Sends the results of ended jobs this session has not sent yet.
async fn send_unsent(
    shared: &Shared,
    up: &mpsc::Sender<v1::AgentMessage>,
    sent: &mut HashSet<u64>,
) -> std::result::Result<(), ()> {
    let unsent: Vec<v1::JobUpdate> = shared
        .jobs
        .lock()
        .expect("jobs lock")
        .finished
        .iter()
        .filter(|u| !sent.contains(&u.job_id))
        .cloned()
        .collect();
    for u in unsent {
        sent.insert(u.job_id);
        send_update(up, u).await.map_err(|_| ())?;
    }
    Ok(())
}

/// Checks the fence and starts the job; returns what to answer at once (refused, started, or the
/// result of a job delivered again). The result of a started job goes out when it ends.
fn take_job(shared: &Arc<Shared>, job: v1::Job) -> Option<v1::JobUpdate> {
    let newest = shared.newest_term.load(Ordering::SeqCst);
    let update = |state| v1::JobUpdate {
        job_id: job.id,
        term: job.term,
        state: Some(state),
    };
    if let Err(why) = fence(job.id, job.term, newest) {
        tracing::warn!(%why, "refusing a job");
        return Some(update(job_update::State::Refused(why)));
    }
    shared.newest_term.fetch_max(job.term, Ordering::SeqCst);
    {
        let mut book = shared.jobs.lock().expect("jobs lock");
        if !book.seen.insert(job.id) {
            tracing::info!(job = job.id, "job delivered again; it runs once");
            return book.finished.iter().find(|u| u.job_id == job.id).cloned();
        }
        book.running.insert(job.id);
    }
    let started = update(job_update::State::Started(v1::Started {}));
    let shared = shared.clone();
    let kind = job_kind(&job);
    // A child of the window, restore, drill or runbook the coordinator traces.
    let span = fleetsnap_telemetry::trace::begin(
        tracing::info_span!(
            parent: None,
            "job",
            job = job.id,
            kind,
            agent = %shared.config.agent_id,
            trace_id = tracing::field::Empty,
        ),
        Some(job.traceparent.as_str()).filter(|t| !t.is_empty()),
    );
    tokio::spawn(
        async move {
            let id = job.id;
            let term = job.term;
            let began = Instant::now();
            tracing::info!(job = id, term, index = job.index, "running a job");
            let finished = match run_job(&shared, job).await {
                Ok(f) => f,
                Err(e) => v1::Finished {
                    ok: false,
                    error: e.to_string(),
                    ..Default::default()
                },
            };
            shared.cuts.leave(id);
            tracing::info!(job = id, ok = finished.ok, error = %finished.error, "job ended");
            let outcome = if finished.ok { "succeeded" } else { "failed" };
            shared
                .metrics
                .add(JOBS, &[("kind", kind), ("outcome", outcome)], 1.0);
            shared.metrics.set(
                JOB_SECONDS,
                &[("kind", kind)],
                began.elapsed().as_secs_f64(),
            );
            let done = v1::JobUpdate {
                job_id: id,
                term,
                state: Some(job_update::State::Finished(finished)),
            };
            {
                let mut book = shared.jobs.lock().expect("jobs lock");
                book.running.remove(&id);
                book.finished.push_back(done);
                while book.finished.len() > KEEP_FINISHED {
                    book.finished.pop_front();
                }
            }
            // The session of the moment sends it; with none, the next Hello carries it.
            shared.job_ended.notify_one();
        }
        .instrument(span),
    );
    Some(started)
}

async fn run_job(shared: &Arc<Shared>, job: v1::Job) -> Result<v1::Finished> {
    let id = job.id;
    let s = match job.kind {
        Some(v1::job::Kind::Snapshot(s)) => s,
        Some(v1::job::Kind::Manifest(m)) => return write_manifest(id, m).await,
        Some(v1::job::Kind::Catalog(c)) => {
            let task: fleetsnap_core::window::CatalogTask = serde_json::from_str(&c.task_json)
                .map_err(|e| {
                    Error::Input(format!(
                        "job {id} carries a catalog task this agent cannot read ({e}); are the agent and the coordinators the same version?"
                    ))
                })?;
            let result = match task {
                fleetsnap_core::window::CatalogTask::Restore(r) => {
                    crate::restore_job::run(*r, &shared.config).await?
                }
                fleetsnap_core::window::CatalogTask::Node(n) => {
                    crate::failover::run(n, &shared.config).await?
                }
                fleetsnap_core::window::CatalogTask::Probe(p) => crate::online::probe(p).await?,
                task => crate::catalog::run(task).await?,
            };
            return Ok(v1::Finished {
                ok: true,
                result_json: serde_json::to_string(&result).expect("results serialise"),
                ..Default::default()
            });
        }
        None => {
            return Err(Error::Input(format!(
                "job {id} is of a kind this agent does not know; upgrade the agent"
            )));
        }
    };
    let instance = shared
        .instances
        .iter()
        .find(|i| i.config.name == s.instance)
        .ok_or_else(|| {
            Error::Input(format!(
                "agent {:?} watches no instance named {:?} (it watches {})",
                shared.config.agent_id,
                s.instance,
                shared
                    .instances
                    .iter()
                    .map(|i| i.config.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    let source = match s.source.as_str() {
        "" | "replication" => SourceKind::Replication,
        "bgsave-file" => SourceKind::BgsaveFile,
        other => {
            return Err(Error::Input(format!(
                "job source {other:?}: a coordinator job takes replication or bgsave-file"
            )));
        }
    };
    let compression: Compression = if s.compress.is_empty() {
        "zstd:3"
    } else {
        s.compress.as_str()
    }
    .parse()
    .map_err(|e: fleetsnap_core::codec::BadCompression| Error::Input(e.to_string()))?;
    let recipients = s
        .encrypt_to
        .iter()
        .map(|r| parse_recipient(r))
        .collect::<Result<Vec<_>>>()?;
    let destinations = s
        .destinations
        .iter()
        .map(|d| DestSpec::parse(d))
        .collect::<Result<Vec<_>>>()?;
    let cluster = if s.cluster.is_empty() {
        instance.config.cluster.clone()
    } else {
        s.cluster
    };
    let shard = if s.shard.is_empty() {
        format!("{}-{}", instance.target.host, instance.target.port)
    } else {
        s.shard
    };
    let settings = &shared.config.snapshot;
    let window = s.window > 0;
    let regions = s.regions.clone();
    if window && regions.len() != s.destinations.len() {
        return Err(Error::Input(format!(
            "job {id} names {} regions for {} destinations",
            regions.len(),
            s.destinations.len()
        )));
    }
    let req = SnapshotRequest {
        target: Some(instance.target.clone()),
        source,
        destinations,
        encode: EncodeOptions {
            compression,
            recipients,
        },
        cluster: ClusterId::new(cluster).map_err(|e| Error::Input(e.to_string()))?,
        shard: ShardId::new(shard).map_err(|e| Error::Input(e.to_string()))?,
        spool: SpoolLimits {
            memory_bytes: 8 << 20,
            dir: settings
                .spool_dir
                .clone()
                .unwrap_or_else(std::env::temp_dir),
            max_bytes: crate::cli::parse_size(&settings.spool_max)?,
        },
        source_options: SourceOptions {
            idle_timeout: Duration::from_secs(settings.idle_timeout_seconds),
            ..Default::default()
        },
        backup_id: if s.backup_id.is_empty() {
            None
        } else {
            Some(
                s.backup_id
                    .parse()
                    .map_err(|e: fleetsnap_core::IdError| Error::Input(e.to_string()))?,
            )
        },
        write_manifest: s.window == 0,
        start_at_ms: (s.fire_at_unix_ms > 0).then_some(s.fire_at_unix_ms),
        cut: s.consistent_cut.then(|| {
            let verdict = shared.cuts.join(id);
            let shared = shared.clone();
            snapshot::CutHooks {
                synced: Arc::new(move |replid, offset| {
                    shared.cuts.synced(id, replid, offset);
                    shared.synced_ready.notify_one();
                }),
                verdict,
            }
        }),
    };
    let started = Instant::now();
    let report = snapshot::snapshot(&req, Arc::new(Progress::default())).await?;
    shared.count_snapshot(&report, &regions);
    tracing::info!(
        job = id,
        backup = %report.backup_id,
        seconds = started.elapsed().as_secs_f64(),
        "snapshot stored"
    );
    let error = report
        .destinations
        .iter()
        .filter_map(|d| d.error.as_ref().map(|e| format!("{}: {e}", d.destination)))
        .collect::<Vec<_>>()
        .join("; ");
    let result_json = match (window, report.entry.clone()) {
        (true, Some(entry)) => serde_json::to_string(&JobResult::Shard(Box::new(ShardResult {
            entry,
            regions: report
                .destinations
                .iter()
                .zip(&regions)
                .map(|(d, region)| RegionResult {
                    region: region.clone(),
                    ok: d.error.is_none(),
                    error: d.error.clone(),
                    stored_bytes: d.stored_bytes,
                })
                .collect(),
            started_at_ms: report.started_at_ms,
            started_at_us: Some(report.started_at_us),
            finished_at_ms: fleetsnap_core::window::unix_ms(time::OffsetDateTime::now_utc()),
        })))
        .expect("results serialise"),
        _ => String::new(),
    };
    Ok(v1::Finished {
        ok: report.complete() > 0,
        error,
        backup_id: report.backup_id.clone(),
        result_json,
        ..Default::default()
    })
}

/// A window's last step for one cluster (see [`crate::catalog::write_manifest`]).
async fn write_manifest(id: u64, m: v1::WriteManifestJob) -> Result<v1::Finished> {
    let manifest = fleetsnap_core::Manifest::from_json(m.manifest_json.as_bytes(), "the job")
        .map_err(|e| Error::Input(e.to_string()))?;
    let regions: Vec<RegionUrl> = m
        .destinations
        .iter()
        .zip(&m.regions)
        .map(|(url, region)| RegionUrl {
            region: region.clone(),
            url: url.clone(),
        })
        .collect();
    let results = crate::catalog::write_manifest(&manifest, &regions).await;
    let ok = results.iter().any(|r| r.ok);
    let error = results
        .iter()
        .filter_map(|r| r.error.as_ref().map(|e| format!("{}: {e}", r.region)))
        .collect::<Vec<_>>()
        .join("; ");
    tracing::info!(job = id, backup = %m.backup_id, cluster = %m.cluster, ok, "manifest job ended");
    Ok(v1::Finished {
        ok,
        error,
        backup_id: m.backup_id,
        result_json: serde_json::to_string(&JobResult::Manifest {
            regions: results,
            finished_at_ms: Some(fleetsnap_core::window::unix_ms(
                time::OffsetDateTime::now_utc(),
            )),
        })
        .expect("results serialise"),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_results_go_in_parts_that_make_them_whole() {
        let big = "x".repeat(3 * RESULT_PART_BYTES + 17);
        let u = v1::JobUpdate {
            job_id: 7,
            term: 3,
            state: Some(job_update::State::Finished(v1::Finished {
                ok: true,
                result_json: big.clone(),
                ..Default::default()
            })),
        };
        assert!(!fits_whole(&u));
        let pieces = split_update(u);
        assert_eq!(pieces.len(), 5);
        let mut joined = Vec::new();
        for (i, p) in pieces[..4].iter().enumerate() {
            let Some(job_update::State::Part(part)) = &p.state else {
                panic!("not a part")
            };
            assert_eq!(part.seq as usize, i);
            assert!(part.data.len() <= RESULT_PART_BYTES);
            joined.extend_from_slice(&part.data);
        }
        let Some(job_update::State::Finished(f)) = &pieces[4].state else {
            panic!("no finish")
        };
        assert_eq!((f.result_parts, f.result_json.as_str()), (4, ""));
        assert_eq!(String::from_utf8(joined).unwrap(), big);
    }

    #[test]
    fn jobs_from_older_terms_are_refused() {
        assert!(fence(1, 5, 5).is_ok());
        assert!(fence(1, 6, 5).is_ok());
        let e = fence(7, 4, 5).unwrap_err();
        assert!(e.contains("job 7") && e.contains("deposed"), "{e}");
    }

    #[test]
    fn unknown_config_keys_are_errors() {
        let e = toml::from_str::<AgentConfig>(
            "agent_id = \"a\"\ncoordinators = [\"x:1\"]\n[[instance]]\nname = \"r\"\nurl = \"redis://h:1\"\nclustr = \"c\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("clustr"), "{e}");
    }
}
