//! The agent's part of a consistent cut (docs/design.md §6).
//!
//! Two roles, often in different agents. The agent of a shard's chosen node runs the snapshot job:
//! it keeps the replication stream after the RDB, says `Synced` with the offset the RDB stands
//! for, and stores the stream up to the offset the coordinator's `CutDecision` names. The agent
//! of a shard's primary answers `CutStep`s: it prepares a connection, pauses writes on it, and on
//! release reads the offset and unpauses in one write, so that a primary's writes wait for one
//! round trip to the leader and no more.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fleetsnap_proto::v1::{self, cut_step::Step};
use tokio::sync::watch;

use super::tail::CutVerdict;
use crate::redis::RedisTarget;
use crate::redis::{Connection, Value, info_field, parse_info, refusal_hint};

/// A prepared connection left unused for this long belongs to a cut its leader gave up.
const STALE: Duration = Duration::from_secs(60);

struct PauseConn {
    conn: Connection,
    prepared_at: Instant,
    /// When `CLIENT PAUSE` was sent.
    paused_at: Option<Instant>,
}

/// What the agent holds for cuts in progress.
#[derive(Default)]
pub struct CutBook {
    /// Per `(cut, instance)`: the connection a primary's pause goes over.
    pauses: Mutex<HashMap<(u64, String), PauseConn>>,
    /// Per snapshot job: where the coordinator's decision goes.
    verdicts: Mutex<HashMap<u64, watch::Sender<Option<CutVerdict>>>>,
    /// Per snapshot job: its `Synced`, said again to every new leader until the job ends.
    synced: Mutex<HashMap<u64, v1::Synced>>,
}

impl CutBook {
    /// A snapshot job that takes part in a cut: the receiver of its decision.
    pub fn join(&self, job: u64) -> watch::Receiver<Option<CutVerdict>> {
        let (tx, rx) = watch::channel(None);
        self.verdicts.lock().expect("cut lock").insert(job, tx);
        rx
    }

    /// The job ended.
    pub fn leave(&self, job: u64) {
        self.verdicts.lock().expect("cut lock").remove(&job);
        self.synced.lock().expect("cut lock").remove(&job);
    }

    /// The job's node announced its RDB.
    pub fn synced(&self, job: u64, replid: String, offset: u64) {
        self.synced.lock().expect("cut lock").insert(
            job,
            v1::Synced {
                job_id: job,
                replid,
                offset,
            },
        );
    }

    /// Every `Synced` of running jobs.
    pub fn all_synced(&self) -> Vec<v1::Synced> {
        self.synced
            .lock()
            .expect("cut lock")
            .values()
            .cloned()
            .collect()
    }

    /// The coordinator's decision for a job; the first one counts (the leader repeats it).
    pub fn decide(&self, d: v1::CutDecision) {
        let verdict = if d.abort.is_empty() {
            Ok((d.replid, d.offset))
        } else {
            Err(d.abort)
        };
        if let Some(tx) = self.verdicts.lock().expect("cut lock").get(&d.job_id) {
            tx.send_if_modified(|v| {
                if v.is_none() {
                    *v = Some(verdict);
                    true
                } else {
                    false
                }
            });
        }
    }

    /// Runs one step on the primary `target` and answers it.
    pub async fn step(&self, s: v1::CutStep, target: Option<&RedisTarget>) -> v1::CutReply {
        let mut reply = v1::CutReply {
            cut: s.cut,
            instance: s.instance.clone(),
            step: s.step,
            ..Default::default()
        };
        let key = (s.cut, s.instance.clone());
        let result = match (Step::try_from(s.step), target) {
            (_, None) => Err(format!(
                "this agent watches no instance named {:?}",
                s.instance
            )),
            (Ok(Step::Prepare), Some(t)) => self.prepare(key, t).await,
            (Ok(Step::Pause), Some(_)) => self.pause(key, s.budget_ms).await,
            (Ok(Step::Release), Some(_)) => self.release(key, &mut reply).await,
            (Ok(Step::Abort), Some(_)) => {
                self.abort(key).await;
                Ok(())
            }
            _ => Err(format!("unknown cut step {}", s.step)),
        };
        if let Err(e) = result {
            reply.error = e;
        }
        reply
    }

    fn take(&self, key: &(u64, String)) -> Result<PauseConn, String> {
        self.pauses
            .lock()
            .expect("cut lock")
            .remove(key)
            .ok_or_else(|| format!("cut {} has no prepared connection to {}", key.0, key.1))
    }

    async fn prepare(&self, key: (u64, String), target: &RedisTarget) -> Result<(), String> {
        self.pauses
            .lock()
            .expect("cut lock")
            .retain(|_, p| p.prepared_at.elapsed() < STALE);
        let conn = Connection::connect(target)
            .await
            .map_err(|e| e.to_string())?;
        self.pauses.lock().expect("cut lock").insert(
            key,
            PauseConn {
                conn,
                prepared_at: Instant::now(),
                paused_at: None,
            },
        );
        Ok(())
    }

    async fn pause(&self, key: (u64, String), budget_ms: u32) -> Result<(), String> {
        let mut p = self.take(&key)?;
        let budget = budget_ms.max(1).to_string();
        p.paused_at = Some(Instant::now());
        match p
            .conn
            .command(&[b"CLIENT", b"PAUSE", budget.as_bytes(), b"WRITE"])
            .await
        {
            Ok(Value::Error(e)) => Err(format!(
                "{} refused CLIENT PAUSE ({e}){}; a consistent cut needs Redis 6.2 or later and +client",
                p.conn.target(),
                refusal_hint(&e)
            )),
            Ok(_) => {
                self.pauses.lock().expect("cut lock").insert(key, p);
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    async fn release(&self, key: (u64, String), reply: &mut v1::CutReply) -> Result<(), String> {
        let mut p = self.take(&key)?;
        let target = p.conn.target().to_string();
        // One write: the offset is read while writes are still held, and the unpause follows it
        // with no round trip in between.
        p.conn
            .send_pipeline(&[
                vec![b"INFO".to_vec(), b"replication".to_vec()],
                vec![b"CLIENT".to_vec(), b"UNPAUSE".to_vec()],
            ])
            .await
            .map_err(|e| e.to_string())?;
        let info = p.conn.read_value().await.map_err(|e| e.to_string())?;
        let unpaused = p.conn.read_value().await.map_err(|e| e.to_string())?;
        reply.paused_us = p.paused_at.map_or(0, |t| t.elapsed().as_micros() as u64);
        if let Value::Error(e) = unpaused {
            return Err(format!(
                "{target} refused CLIENT UNPAUSE ({e}); its writes resume when the pause budget ends"
            ));
        }
        let text = info
            .text()
            .ok_or_else(|| format!("{target} answered INFO replication with {info:?}"))?;
        let fields = parse_info(&text);
        reply.replid = info_field(&fields, "master_replid")
            .unwrap_or_default()
            .to_string();
        reply.offset = info_field(&fields, "master_repl_offset")
            .and_then(|o| o.parse().ok())
            .ok_or_else(|| format!("{target} reported no master_repl_offset"))?;
        if info_field(&fields, "role") != Some("master") {
            return Err(format!(
                "{target} is no longer a primary: the shard failed over"
            ));
        }
        Ok(())
    }

    async fn abort(&self, key: (u64, String)) {
        if let Ok(mut p) = self.take(&key)
            && p.paused_at.is_some()
        {
            let _ = p.conn.command(&[b"CLIENT", b"UNPAUSE"]).await;
        }
    }
}
