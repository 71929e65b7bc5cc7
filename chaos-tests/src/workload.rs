//! The writer that runs through every scenario, and what it saw acknowledged.
//!
//! One writer, one write at a time: write `g` (1, 2, 3, …) goes to shard `g % SHARDS` as
//! `SET {tag}:w:<g> <g>` and is retried until Redis acknowledges it (a timeout or a refused
//! connection says nothing about whether it landed; a retry of the same `SET` is harmless) or
//! for at most 20 s, after which it is recorded as perhaps written. It paces itself to a few
//! hundred writes a second. So the acknowledged writes
//! have a total order, and any state a backup can capture is a prefix of it per shard, and for a
//! consistent cut one prefix of it for the whole cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use fleetsnap_agent::redis::RedisTarget;
use fleetsnap_agent::redis::{Connection, Value};
use fleetsnap_core::keys::key_slot;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::layout::SHARDS;

/// Slot ranges of the shards as `redis-cli --cluster create` lays them out.
pub fn shard_of_slot(slot: u16) -> usize {
    match slot {
        0..=5460 => 0,
        5461..=10922 => 1,
        _ => 2,
    }
}

/// A hash tag per shard whose keys live in it.
pub fn tags() -> Vec<String> {
    let mut tags = vec![String::new(); SHARDS];
    let mut found = 0;
    for t in 0.. {
        let tag = format!("t{t}");
        let k = shard_of_slot(key_slot(tag.as_bytes()));
        if tags[k].is_empty() {
            tags[k] = tag;
            found += 1;
            if found == SHARDS {
                break;
            }
        }
    }
    tags
}

/// The key of write `g`.
pub fn key(tags: &[String], g: u64) -> String {
    format!("{{{}}}:w:{g}", tags[(g % SHARDS as u64) as usize])
}

/// The write a key holds, if it is one of the writer's.
pub fn write_of(key: &str) -> Option<u64> {
    key.rsplit_once(":w:")?.1.parse().ok()
}

/// What the writer saw.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Acknowledged writes, with when.
    pub acked: BTreeMap<u64, SystemTime>,
    /// Writes given up on: they may or may not have landed.
    pub maybe: BTreeSet<u64>,
    /// The next write it would send.
    pub next: u64,
}

impl History {
    /// The last acknowledged write.
    pub fn last_acked(&self) -> u64 {
        self.acked.keys().next_back().copied().unwrap_or(0)
    }
}

/// A running writer; `stop` ends it and gives its history.
pub struct Writer {
    history: Arc<Mutex<History>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Writer {
    /// Starts writing to the cluster through any of `seeds` (`IP:PORT`).
    pub fn start(seeds: Vec<String>) -> Self {
        let history = Arc::new(Mutex::new(History {
            next: 1,
            ..History::default()
        }));
        let (stop, stopped) = watch::channel(false);
        let h = history.clone();
        let task = tokio::spawn(async move { run(seeds, h, stopped).await });
        Self {
            history,
            stop,
            task,
        }
    }

    /// What it has seen so far.
    pub fn history(&self) -> History {
        self.history.lock().expect("history").clone()
    }

    /// Waits until at least `n` more writes are acknowledged (at most `limit`).
    pub async fn wait_more(&self, n: u64, limit: Duration) -> anyhow::Result<()> {
        let target = self.history().last_acked() + n;
        fleetsnap_testkit::poll_until("the writer's progress", limit, || async {
            (self.history().last_acked() >= target).then_some(())
        })
        .await
    }

    /// Stops it and returns its history.
    pub async fn stop(self) -> History {
        self.stop.send_replace(true);
        let _ = self.task.await;
        self.history.lock().expect("history").clone()
    }
}

/// Shard → primary address, from `CLUSTER SLOTS` of any seed that answers.
async fn routes(seeds: &[String]) -> Option<Vec<String>> {
    for s in seeds {
        let Ok(t) = RedisTarget::parse(&format!("redis://{s}")) else {
            continue;
        };
        let Ok(Ok(mut c)) =
            tokio::time::timeout(Duration::from_secs(2), Connection::connect(&t)).await
        else {
            continue;
        };
        let Ok(Ok(Value::Array(Some(ranges)))) =
            tokio::time::timeout(Duration::from_secs(2), c.command(&[b"CLUSTER", b"SLOTS"])).await
        else {
            continue;
        };
        let mut out = vec![String::new(); SHARDS];
        for r in ranges {
            let Value::Array(Some(parts)) = r else {
                continue;
            };
            let (Some(Value::Int(start)), Some(Value::Array(Some(primary)))) =
                (parts.first(), parts.get(2))
            else {
                continue;
            };
            let (Some(Value::Bulk(Some(ip))), Some(Value::Int(port))) =
                (primary.first(), primary.get(1))
            else {
                continue;
            };
            out[shard_of_slot(*start as u16)] = format!("{}:{port}", String::from_utf8_lossy(ip));
        }
        if out.iter().all(|a| !a.is_empty()) {
            return Some(out);
        }
    }
    None
}

async fn run(seeds: Vec<String>, history: Arc<Mutex<History>>, mut stopped: watch::Receiver<bool>) {
    let tags = tags();
    let mut route: Option<Vec<String>> = None;
    let mut conns: Vec<Option<Connection>> = (0..SHARDS).map(|_| None).collect();
    let mut g = 1u64;
    while !*stopped.borrow_and_update() {
        let shard = (g % SHARDS as u64) as usize;
        let key = key(&tags, g);
        let value = g.to_string();
        let started = Instant::now();
        let mut acked = false;
        while started.elapsed() < Duration::from_secs(20) && !*stopped.borrow() {
            if route.is_none() {
                route = routes(&seeds).await;
                conns.iter_mut().for_each(|c| *c = None);
                if route.is_none() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
            let addr = route.as_ref().expect("routes")[shard].clone();
            if conns[shard].is_none() {
                let Ok(t) = RedisTarget::parse(&format!("redis://{addr}")) else {
                    route = None;
                    continue;
                };
                match tokio::time::timeout(Duration::from_secs(2), Connection::connect(&t)).await {
                    Ok(Ok(c)) => conns[shard] = Some(c),
                    _ => {
                        route = None;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
            let c = conns[shard].as_mut().expect("connected");
            let r = tokio::time::timeout(
                Duration::from_secs(2),
                c.command(&[b"SET", key.as_bytes(), value.as_bytes()]),
            )
            .await;
            match r {
                Ok(Ok(Value::Simple(s))) if s == "OK" => {
                    acked = true;
                    break;
                }
                // MOVED, CLUSTERDOWN, READONLY, a dropped link: the layout changed.
                _ => {
                    conns[shard] = None;
                    route = None;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        {
            let mut h = history.lock().expect("history");
            if acked {
                h.acked.insert(g, SystemTime::now());
            } else {
                h.maybe.insert(g);
            }
            g += 1;
            h.next = g;
        }
        // About 300 writes a second: enough to see every cut, few enough that snapshots stay
        // seconds long through a scenario.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
}
