//! Restoring a shard to files: the verified copy from the first region that has a good one,
//! written exclusively (no link followed, nothing existing overwritten without `--force`).

use fleetsnap_core::outcomes::RestoreReport;
use std::io::Write;
use std::path::{Path, PathBuf};

use fleetsnap_core::{BackupId, ClusterId, Manifest, ObjectEntry, ObjectKind, ShardEntry, ShardId};

use super::list::*;
use super::verify::*;
use crate::archive::ArchiveTail;
use crate::error::{Error, Result};
use crate::storage::{DestSpec, Store};

/// What to restore.
pub struct RestoreRequest {
    /// Destinations in order of preference.
    pub from: Vec<DestSpec>,
    /// The backup.
    pub backup: BackupId,
    /// The cluster; may be omitted when the id is in one cluster, or the shard names it.
    pub cluster: Option<ClusterId>,
    /// The shard; may be omitted when the backup has one.
    pub shard: Option<ShardId>,
    /// Where the RDB goes; a tail goes next to it as `<PATH>.tail`. With `aof_dir`, the directory.
    pub to_file: PathBuf,
    /// Write a Redis 7 AOF directory instead (`appendonly.aof.1.base.rdb`, the tail as
    /// `appendonly.aof.1.incr.aof`, and the manifest): redis-server started on it with
    /// `appendonly yes` loads the RDB and replays the tail by itself.
    pub aof_dir: bool,
    /// age identity file for encrypted backups.
    pub identity: Option<PathBuf>,
    /// fsync what is written before returning. Off for scratch copies, and for `replace`, which
    /// syncs the file while the node loads it.
    pub sync: bool,
    /// Replace files already at the output paths (regular files only: a link, a device or a
    /// FIFO there is always refused). Without it, an output that exists is an error.
    pub force: bool,
    /// A tail from the continuous archive that takes the place of the backup's own: the
    /// backup is a chain's base, and this tail brings it to a point in time. It may still be
    /// being written: the base is fetched meanwhile, and the tail placed once it is ready.
    pub archive_tail: Option<ArchiveTail>,
}

/// Restores one shard to a file, reading the first destination that yields a verified copy.
pub async fn restore(req: &RestoreRequest) -> Result<RestoreReport> {
    if req.from.is_empty() {
        return Err(Error::Input(
            "no source: give at least one --from DEST".into(),
        ));
    }
    if let Some(p) = &req.identity {
        load_identities(p)?;
    }
    check_outputs(req)?;
    let dir = if req.aof_dir {
        Some(req.to_file.as_path())
    } else {
        req.to_file.parent().filter(|d| !d.as_os_str().is_empty())
    };
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::file("cannot create the directory to restore to", dir, e))?;
    }
    let mut skipped = Vec::new();
    for spec in &req.from {
        match restore_from(spec, req).await {
            Ok(mut r) => {
                r.skipped = skipped;
                if let Some(t) = &req.archive_tail
                    && let Err(e) = place_archive_tail(t, req).await
                {
                    // A base without the tail that brings it to the point is not what was asked.
                    std::fs::remove_file(&r.rdb_file).ok();
                    if req.aof_dir {
                        std::fs::remove_file(req.to_file.join(format!("{AOF_NAME}.manifest"))).ok();
                    }
                    return Err(e);
                }
                return Ok(r);
            }
            // A problem on this side (bad arguments, the local disk) is the same for every region.
            Err(e @ (Error::Input(_) | Error::File { .. })) => return Err(e),
            Err(e) => skipped.push((spec.to_string(), e.to_string())),
        }
    }
    let why: Vec<String> = skipped.iter().map(|(d, e)| format!("{d}: {e}")).collect();
    Err(Error::Failed(format!(
        "backup {} could not be restored from any destination:\n  {}",
        req.backup,
        why.join("\n  ")
    )))
}

pub(super) fn pick_shard<'a>(m: &'a Manifest, shard: Option<&ShardId>) -> Result<&'a ShardEntry> {
    match shard {
        Some(s) => m.shard(s).ok_or_else(|| {
            Error::Input(format!(
                "backup {} has no shard {s}; its shards: {}",
                m.backup_id,
                names(m)
            ))
        }),
        None if m.shards.len() == 1 => Ok(&m.shards[0]),
        None => Err(Error::Input(format!(
            "backup {} has {} shards: choose one with --shard ({})",
            m.backup_id,
            m.shards.len(),
            names(m)
        ))),
    }
}

/// The AOF base name redis-server looks for (`appendfilename`'s default).
const AOF_NAME: &str = "appendonly.aof";

/// Waits for the archive's tail and puts it in place beside the restored RDB, exclusively (see
/// `write_new`): linked when it was written on the same filesystem, copied otherwise.
async fn place_archive_tail(tail: &ArchiveTail, req: &RestoreRequest) -> Result<()> {
    tail.ready().await?;
    let (from, (_, to)) = (tail.path(), paths(req));
    if req.force && is_regular(&to) {
        std::fs::remove_file(&to).map_err(|e| Error::file("cannot replace", &to, e))?;
    }
    let partial = with_suffix(&to, ".partial");
    if req.force && is_regular(&partial) {
        std::fs::remove_file(&partial).map_err(|e| Error::file("cannot replace", &partial, e))?;
    }
    if std::fs::hard_link(from, &partial).is_err() {
        let mut out = create_new(&partial, req.force)?;
        let copied = std::fs::File::open(from)
            .and_then(|mut f| std::io::copy(&mut f, &mut out))
            .and_then(|_| if req.sync { out.sync_all() } else { Ok(()) });
        if let Err(e) = copied {
            std::fs::remove_file(&partial).ok();
            return Err(Error::file("cannot write", &partial, e));
        }
    }
    std::fs::rename(&partial, &to)
        .map_err(|e| Error::file("cannot move the restored file into place", &to, e))
}

/// Where the RDB and the tail go.
fn paths(req: &RestoreRequest) -> (PathBuf, PathBuf) {
    if req.aof_dir {
        (
            req.to_file.join(format!("{AOF_NAME}.1.base.rdb")),
            req.to_file.join(format!("{AOF_NAME}.1.incr.aof")),
        )
    } else {
        (req.to_file.clone(), with_suffix(&req.to_file, ".tail"))
    }
}

/// `p` with `suffix` added to its file name (`dump.rdb` → `dump.rdb.partial`).
pub(crate) fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Whether `p` is a regular file (not following a link).
fn is_regular(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_file())
}

/// Writes a small file of a restore (an AOF directory's manifest) exclusively.
fn write_new(path: &Path, bytes: &[u8], req: &RestoreRequest) -> Result<()> {
    let partial = with_suffix(path, ".partial");
    let mut f = create_new(&partial, req.force)?;
    let written = f
        .write_all(bytes)
        .and_then(|()| if req.sync { f.sync_all() } else { Ok(()) });
    if let Err(e) = written {
        std::fs::remove_file(&partial).ok();
        return Err(Error::file("cannot write", &partial, e));
    }
    std::fs::rename(&partial, path)
        .map_err(|e| Error::file("cannot move the restored file into place", path, e))
}

/// `p` made absolute with every link in its existing part resolved; the part that does not
/// exist yet is appended as written.
fn resolved(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return rest.iter().rev().fold(real, |mut out, part| {
                out.push(part);
                out
            });
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return abs,
        }
    }
}

/// Refuses outputs a restore must not touch, before anything is fetched: a link, a device, a
/// FIFO or a directory at an output path (always), a file there (unless `force`), a path inside
/// a file region the restore reads (it could be a stored copy), and an AOF directory that is a
/// link.
fn check_outputs(req: &RestoreRequest) -> Result<()> {
    let (rdb, tail) = paths(req);
    let mut outputs = vec![rdb, tail];
    if req.aof_dir {
        outputs.push(req.to_file.join(format!("{AOF_NAME}.manifest")));
        if std::fs::symlink_metadata(&req.to_file).is_ok_and(|m| !m.file_type().is_dir()) {
            return Err(Error::Input(format!(
                "--aof-dir {} is a link or not a directory: give a directory (the one a link points to, if that is meant)",
                req.to_file.display()
            )));
        }
    }
    for out in &outputs {
        for p in [out.clone(), with_suffix(out, ".partial")] {
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let t = m.file_type();
            let what = if t.is_symlink() {
                Some("a symbolic link: a restore does not write through links")
            } else if t.is_dir() {
                Some("a directory")
            } else if !t.is_file() {
                Some("a device, FIFO or socket, not a file")
            } else {
                None
            };
            if let Some(what) = what {
                return Err(Error::Input(format!(
                    "{} is {what}: remove it or choose another path",
                    p.display()
                )));
            }
            if !req.force && p == *out {
                return Err(Error::Input(format!(
                    "{} already exists: pass --force to replace it, or choose another path",
                    p.display()
                )));
            }
        }
        let at = resolved(out);
        for spec in &req.from {
            if let DestSpec::File { root } = spec
                && at.starts_with(resolved(root))
            {
                return Err(Error::Input(format!(
                    "{} is inside region {spec}: a restore never writes into a region it could overwrite a stored copy of; choose a path outside it",
                    out.display()
                )));
            }
        }
    }
    Ok(())
}

/// The shard's entry in the set's manifest in one destination, and the prefix of its objects.
async fn find_shard(spec: &DestSpec, req: &RestoreRequest) -> Result<(Store, String, ShardEntry)> {
    let store = Store::open(spec).await?;
    let (m, dir) = find_manifest(
        &store,
        &req.backup,
        req.cluster.as_ref(),
        req.shard.as_ref(),
    )
    .await?;
    let shard = pick_shard(&m, req.shard.as_ref())?.clone();
    if shard.source_kind == "scan" {
        tracing::warn!(
            backup = %req.backup,
            shard = %shard.shard,
            "this backup was {}",
            crate::snapshot::NOT_POINT_IN_TIME
        );
    }
    if shard.objects.iter().any(|o| o.codecs.encrypted()) && req.identity.is_none() {
        return Err(Error::Input(format!(
            "backup {} is encrypted with age: pass --identity AGE_KEY_FILE",
            req.backup
        )));
    }
    Ok((store, dir, shard))
}

/// A shard's copy in one destination, made ready to stream: its manifest read and its tail, if
/// it has one, fetched and verified to `….tail` beside `to_file`.
pub struct Prepared {
    store: Store,
    dir: String,
    rdb: ObjectEntry,
    /// What the restore reports once the RDB has streamed to `to_file`.
    pub report: RestoreReport,
}

/// Readies a streamed restore of an RDB (not an AOF directory) from one destination.
pub async fn prepare_stream(spec: &DestSpec, req: &RestoreRequest) -> Result<Prepared> {
    if req.aof_dir {
        return Err(Error::Input(
            "an AOF directory cannot be streamed: restore it to a directory".into(),
        ));
    }
    let (store, dir, shard) = find_shard(spec, req).await?;
    let (rdb_path, tail_path) = paths(req);
    let rdb = shard
        .objects
        .iter()
        .find(|o| o.kind == ObjectKind::Rdb)
        .cloned()
        .ok_or_else(|| {
            Error::storage(&store, format!("{dir}: shard {} has no RDB", shard.shard))
        })?;
    let mut tail_file = None;
    // An archive's tail is still being written: `replace` waits for it and replays it from
    // where it is.
    let own_tail = shard.objects.iter().find(|o| o.kind == ObjectKind::Tail);
    if let (None, Some(t)) = (&req.archive_tail, own_tail) {
        let partial = with_suffix(&tail_path, ".partial");
        let out = Output {
            path: partial.clone(),
            sync: true,
            replace: req.force,
        };
        if let Err(e) = check_object(&store, &dir, t, req.identity.as_deref(), Some(out)).await {
            if !matches!(e, Error::Input(_)) {
                std::fs::remove_file(&partial).ok();
            }
            return Err(e);
        }
        std::fs::rename(&partial, &tail_path)
            .map_err(|e| Error::file("cannot move the restored file into place", &tail_path, e))?;
        tail_file = Some(tail_path.display().to_string());
    }
    let report = RestoreReport {
        destination: spec.to_string(),
        skipped: Vec::new(),
        shard: shard.shard.to_string(),
        rdb_file: rdb_path.display().to_string(),
        tail_file,
        raw_bytes: rdb.raw_bytes,
        aof_dir: false,
        slot_ranges: shard.slot_ranges.clone(),
        dbs: shard.dbs.clone(),
        server: shard.server.clone(),
    };
    Ok(Prepared {
        store,
        dir,
        rdb,
        report,
    })
}

/// Streams a prepared RDB into `pipe` and to `to_file` at once, verifying it as it goes; the last
/// bytes for the pipe come back once the object has matched its manifest.
pub async fn stream_rdb(
    p: &Prepared,
    req: &RestoreRequest,
    pipe: std::fs::File,
) -> Result<HeldBack> {
    let (checked, held) = check_object_piped(
        &p.store,
        &p.dir,
        &p.rdb,
        req.identity.as_deref(),
        Some(Output {
            path: req.to_file.clone(),
            sync: false,
            replace: req.force,
        }),
        Some(pipe),
    )
    .await?;
    if checked.raw_bytes.is_none() {
        return Err(Error::Input(
            "the backup is encrypted: pass --identity AGE_KEY_FILE".into(),
        ));
    }
    held.ok_or_else(|| Error::Failed("the decoder gave no pipe back".into()))
}

async fn restore_from(spec: &DestSpec, req: &RestoreRequest) -> Result<RestoreReport> {
    let (store, dir, shard) = find_shard(spec, req).await?;
    let shard = &shard;
    let (rdb_path, tail_path) = paths(req);
    let mut written = Vec::new();
    let mut raw_bytes = 0;
    let mut has_tail = false;
    for o in &shard.objects {
        let final_path = match o.kind {
            ObjectKind::Rdb => rdb_path.clone(),
            // The archive's tail takes the place of the backup's own.
            ObjectKind::Tail if req.archive_tail.is_some() => continue,
            ObjectKind::Tail => {
                has_tail = true;
                tail_path.clone()
            }
        };
        let partial = with_suffix(&final_path, ".partial");
        let out = Output {
            path: partial.clone(),
            sync: req.sync,
            replace: req.force,
        };
        match check_object(&store, &dir, o, req.identity.as_deref(), Some(out)).await {
            Ok(c) => {
                if o.kind == ObjectKind::Rdb {
                    raw_bytes = c.raw_bytes.unwrap_or(0);
                }
                written.push((partial, final_path));
            }
            Err(e) => {
                // A file that was there already (Input) is not this restore's to remove.
                if !matches!(e, Error::Input(_)) {
                    std::fs::remove_file(&partial).ok();
                }
                for (p, _) in &written {
                    std::fs::remove_file(p).ok();
                }
                return Err(e);
            }
        }
    }
    for (partial, final_path) in &written {
        std::fs::rename(partial, final_path)
            .map_err(|e| Error::file("cannot move the restored file into place", final_path, e))?;
    }
    // An archive's tail is placed by `restore` once it is written.
    has_tail |= req.archive_tail.is_some();
    if req.aof_dir {
        if !has_tail {
            write_new(&tail_path, b"", req)?;
        }
        let manifest = req.to_file.join(format!("{AOF_NAME}.manifest"));
        let text = format!(
            "file {AOF_NAME}.1.base.rdb seq 1 type b\nfile {AOF_NAME}.1.incr.aof seq 1 type i\n"
        );
        write_new(&manifest, text.as_bytes(), req)?;
    } else if !has_tail && is_regular(&tail_path) {
        // A tail left by an earlier restore to the same path (refused above unless --force)
        // does not belong to this backup: replaying it would be wrong.
        std::fs::remove_file(&tail_path)
            .map_err(|e| Error::file("cannot remove the earlier restore's tail", &tail_path, e))?;
    }
    Ok(RestoreReport {
        destination: spec.to_string(),
        skipped: Vec::new(),
        shard: shard.shard.to_string(),
        rdb_file: rdb_path.display().to_string(),
        tail_file: (has_tail || req.aof_dir).then(|| tail_path.display().to_string()),
        raw_bytes,
        aof_dir: req.aof_dir,
        slot_ranges: shard.slot_ranges.clone(),
        dbs: shard.dbs.clone(),
        server: shard.server.clone(),
    })
}
