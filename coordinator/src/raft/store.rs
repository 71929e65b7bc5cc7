//! Raft storage in one redb database: the log, the vote and commit marks, the applied state and
//! the latest snapshot. Every write is one redb transaction, durable on commit.

// openraft's storage traits return its (large) `StorageError` by value; the helpers here match them.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::state::{FleetState, Response};
use crate::{NodeId, TypeConfig};

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "last_purged";
const APPLIED: &str = "applied";
const SNAPSHOT: &str = "snapshot";
const NODE_ID: &str = "node_id";

/// Opening the data directory failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "cannot open the coordinator database {path}: {reason}. If the file is damaged, move it aside and re-add this node to the cluster (`fleetsnap cluster add-node`): it will receive a snapshot from the leader"
    )]
    Corrupt { path: String, reason: String },
    #[error(
        "the coordinator database {path} belongs to node {stored}, but this node is configured as {configured}: a node keeps its id for life; point data_dir at node {configured}'s directory, or at an empty one to join as a new node"
    )]
    WrongNode {
        path: String,
        stored: u64,
        configured: u64,
    },
}

/// Ties the database at `path` to node `id` on first use; later opens must name the same id.
pub fn claim_node_id(
    path: &Path,
    log: &LogStore,
    id: NodeId,
) -> std::result::Result<(), OpenError> {
    let corrupt = |reason: String| OpenError::Corrupt {
        path: path.display().to_string(),
        reason,
    };
    match get_meta(&log.db, NODE_ID).map_err(|e| corrupt(e.to_string()))? {
        Some(bytes) => {
            let stored: u64 = serde_json::from_slice(&bytes)
                .map_err(|e| corrupt(format!("the node id does not parse: {e}")))?;
            if stored != id {
                return Err(OpenError::WrongNode {
                    path: path.display().to_string(),
                    stored,
                    configured: id,
                });
            }
            Ok(())
        }
        None => put_meta(&log.db, &[(NODE_ID, json(&id))]).map_err(|e| corrupt(e.to_string())),
    }
}

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

fn read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read(AnyError::new(&e)).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write(AnyError::new(&e)).into()
}

/// The applied state, as persisted and as shared with readers.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Applied {
    /// The last log id applied.
    pub last_applied: Option<LogId<NodeId>>,
    /// The membership in force.
    pub membership: StoredMembership<NodeId, BasicNode>,
    /// The fleet state.
    pub state: FleetState,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

/// Opens (or creates) the database at `path` and returns the log store and the state machine.
pub fn open(path: &Path) -> std::result::Result<(LogStore, StateMachine), OpenError> {
    let corrupt = |reason: String| OpenError::Corrupt {
        path: path.display().to_string(),
        reason,
    };
    let db = Database::create(path).map_err(|e| corrupt(e.to_string()))?;
    let txn = db.begin_write().map_err(|e| corrupt(e.to_string()))?;
    txn.open_table(LOGS).map_err(|e| corrupt(e.to_string()))?;
    txn.open_table(META).map_err(|e| corrupt(e.to_string()))?;
    txn.commit().map_err(|e| corrupt(e.to_string()))?;
    let db = Arc::new(db);
    let applied: Applied = match get_meta(&db, APPLIED).map_err(|e| corrupt(e.to_string()))? {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| corrupt(format!("the applied state does not parse: {e}")))?,
        None => Applied::default(),
    };
    let persisted = applied.last_applied.map(|l| l.index).unwrap_or_default();
    let sm = StateMachine {
        db: db.clone(),
        applied: Arc::new(RwLock::new(applied)),
        persisted: Arc::new(persisted.into()),
    };
    Ok((LogStore { db }, sm))
}

fn get_meta(db: &Database, key: &str) -> Result<Option<Vec<u8>>> {
    let txn = db.begin_read().map_err(read_err)?;
    let table = txn.open_table(META).map_err(read_err)?;
    Ok(table
        .get(key)
        .map_err(read_err)?
        .map(|v| v.value().to_vec()))
}

fn put_meta(db: &Database, entries: &[(&str, Vec<u8>)]) -> Result<()> {
    let txn = db.begin_write().map_err(write_err)?;
    {
        let mut table = txn.open_table(META).map_err(write_err)?;
        for (k, v) in entries {
            table.insert(*k, v.as_slice()).map_err(write_err)?;
        }
    }
    txn.commit().map_err(write_err)
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("raft types serialise")
}

fn parse<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(read_err)
}

/// The Raft log, vote and commit marks.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(LOGS).map_err(read_err)?;
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        let mut out = Vec::new();
        for item in table.range(bounds).map_err(read_err)? {
            let (_, v) = item.map_err(read_err)?;
            out.push(parse(v.value())?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> =
            get_meta(&self.db, PURGED)?.map(|b| parse(&b)).transpose()?;
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(LOGS).map_err(read_err)?;
        let last = match table.last().map_err(read_err)? {
            Some((_, v)) => Some(parse::<Entry<TypeConfig>>(v.value())?.log_id),
            None => None,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        put_meta(&self.db, &[(VOTE, json(vote))])
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        get_meta(&self.db, VOTE)?.map(|b| parse(&b)).transpose()
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        put_meta(&self.db, &[(COMMITTED, json(&committed))])
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>> {
        Ok(get_meta(&self.db, COMMITTED)?
            .map(|b| parse::<Option<LogId<NodeId>>>(&b))
            .transpose()?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let txn = self.db.begin_write().map_err(write_err)?;
        {
            let mut table = txn.open_table(LOGS).map_err(write_err)?;
            for e in entries {
                table
                    .insert(e.log_id.index, json(&e).as_slice())
                    .map_err(write_err)?;
            }
        }
        txn.commit().map_err(write_err)?;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        let txn = self.db.begin_write().map_err(write_err)?;
        {
            let mut table = txn.open_table(LOGS).map_err(write_err)?;
            table
                .retain_in(log_id.index.., |_, _| false)
                .map_err(write_err)?;
        }
        txn.commit().map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        let txn = self.db.begin_write().map_err(write_err)?;
        {
            let mut meta = txn.open_table(META).map_err(write_err)?;
            meta.insert(PURGED, json(&log_id).as_slice())
                .map_err(write_err)?;
            let mut table = txn.open_table(LOGS).map_err(write_err)?;
            table
                .retain_in(..=log_id.index, |_, _| false)
                .map_err(write_err)?;
        }
        txn.commit().map_err(write_err)
    }
}

/// The state machine: the applied fleet state, persisted with every applied batch.
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Database>,
    applied: Arc<RwLock<Applied>>,
    /// Log index of the applied state last written to disk.
    persisted: Arc<std::sync::atomic::AtomicU64>,
}

/// The applied state is written to disk every this many entries (and with every snapshot and
/// membership change), not with every entry: after a restart openraft applies the log entries
/// past the written state again, and applying is deterministic. With thousands of agents
/// registering at once, writing the whole state per entry would be quadratic.
const PERSIST_EVERY: u64 = 256;

impl StateMachine {
    /// A handle to read the applied state (for linearizable reads after `ensure_linearizable`).
    pub fn shared(&self) -> Arc<RwLock<Applied>> {
        self.applied.clone()
    }

    fn save(&self, extra: Option<(&str, Vec<u8>)>) -> Result<()> {
        let (applied, index) = {
            let a = self.applied.read().expect("state lock");
            (
                json(&*a),
                a.last_applied.map(|l| l.index).unwrap_or_default(),
            )
        };
        self.persisted
            .store(index, std::sync::atomic::Ordering::Relaxed);
        let mut entries = vec![(APPLIED, applied)];
        entries.extend(extra);
        put_meta(&self.db, &entries)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let (data, last_log_id, membership) = {
            let a = self.applied.read().expect("state lock");
            (json(&*a), a.last_applied, a.membership.clone())
        };
        let snapshot_id = match last_log_id {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, std::process::id()),
            None => format!("empty-{}", std::process::id()),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership: membership,
            snapshot_id,
        };
        // The applied state goes to disk with the snapshot: the log behind it may be dropped.
        self.save(Some((
            SNAPSHOT,
            json(&StoredSnapshot {
                meta: meta.clone(),
                data: data.clone(),
            }),
        )))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        let a = self.applied.read().expect("state lock");
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        let mut membership_changed = false;
        let last = {
            let mut a = self.applied.write().expect("state lock");
            for e in entries {
                a.last_applied = Some(e.log_id);
                let r = match &e.payload {
                    EntryPayload::Blank => Response::default(),
                    EntryPayload::Normal(cmd) => {
                        a.state.apply(e.log_id.leader_id.term, e.log_id.index, cmd)
                    }
                    EntryPayload::Membership(m) => {
                        a.membership = StoredMembership::new(Some(e.log_id), m.clone());
                        membership_changed = true;
                        Response::default()
                    }
                };
                responses.push(r);
            }
            a.last_applied.map(|l| l.index).unwrap_or_default()
        };
        let persisted = self.persisted.load(std::sync::atomic::Ordering::Relaxed);
        if membership_changed || last >= persisted + PERSIST_EVERY {
            self.save(None)?;
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<()> {
        let data = snapshot.into_inner();
        let mut installed: Applied = parse(&data)?;
        installed.last_applied = meta.last_log_id;
        installed.membership = meta.last_membership.clone();
        *self.applied.write().expect("state lock") = installed;
        self.save(Some((
            SNAPSHOT,
            json(&StoredSnapshot {
                meta: meta.clone(),
                data,
            }),
        )))
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        Ok(get_meta(&self.db, SNAPSHOT)?
            .map(|b| parse::<StoredSnapshot>(&b))
            .transpose()?
            .map(|s| Snapshot {
                meta: s.meta,
                snapshot: Box::new(Cursor::new(s.data)),
            }))
    }
}
