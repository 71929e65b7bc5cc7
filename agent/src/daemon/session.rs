//! `fleetsnap-agent run --config FILE`: watch the Redis instances of this host, report them to the
//! coordinator leader every second over one long-lived gRPC stream, and run the jobs it sends.
//!
//! The agent follows the leader: a follower answers with a `Redirect` and the agent reconnects
//! there; a lost stream sends it through the coordinator list with a short, capped, jittered
//! backoff. Jobs are fenced: one whose term is older than the newest term the agent has seen is
//! refused, and a job id is run at most once per agent process.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleetsnap_core::InstanceReport;
use fleetsnap_proto::tls::Transport;
use fleetsnap_proto::v1::agent_service_client::AgentServiceClient;
use fleetsnap_proto::v1::{self, agent_message, coordinator_message, job_update};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::jobs::*;
use super::metrics::*;
use super::shared::*;
use crate::config::AgentConfig;
use crate::error::{Error, Result};
use crate::redis::RedisTarget;
use crate::snapshot::CutBook;
use fleetsnap_telemetry::metrics::Registry;

/// `d` give or take a quarter: jitter spreads thousands of agents over a period instead of one
/// burst.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::random::<f64>() * 0.5 + 0.75)
}

/// How often the spare connections are used, so that they stay up.
const STANDBY_EVERY: Duration = Duration::from_secs(30);

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
        lost_at: Mutex::new(None),
        archives: Mutex::new(HashMap::new()),
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
                        crate::redis::collect(&name, &target),
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
            | coordinator_message::Body::CutDecision(_)
            | coordinator_message::Body::StopJob(_) => {
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
                        archives: shared.archive_progress(),
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
                Ok(Some(v1::CoordinatorMessage { body: Some(coordinator_message::Body::StopJob(j)) })) => {
                    shared.stop_job(j.job_id, j.reason);
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
