//! File regions: a local directory that is never left ([`Confined`]), objects written under
//! `.partial` names and renamed into place once synced, and reads in large chunks on the
//! blocking pool.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use fleetsnap_core::manifest::check_key;
use tokio::io::AsyncWriteExt;

use super::confined::{Confined, Pending};
use super::dest::DestSpec;
use crate::error::{Error, Result};

/// How much of an object one read returns.
const FILE_CHUNK: usize = 4 << 20;

/// One file region (and the destination it stands for, for messages).
#[derive(Clone)]
pub(super) struct Region {
    spec: DestSpec,
    root: Confined,
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

impl Region {
    pub(super) fn open(spec: &DestSpec, root: &Path) -> Self {
        Self {
            spec: spec.clone(),
            root: Confined::new(root),
        }
    }

    fn err(&self, message: impl Into<String>) -> Error {
        Error::storage(&self.spec, message)
    }

    /// The file a checked relative key names, for messages.
    pub(super) fn shown(&self, rel: &str) -> PathBuf {
        self.root.display_path(rel)
    }

    /// Creates `rel` under a `.partial` name, exclusively and without following a link.
    pub(super) async fn begin(&self, rel: &str) -> Result<FileUpload> {
        let partial = partial_path(&self.root.display_path(rel));
        let (root, owned) = (self.root.clone(), rel.to_string());
        let created = tokio::task::spawn_blocking(move || root.create(&owned))
            .await
            .map_err(|e| self.err(format!("cannot create {}: {e}", partial.display())))?
            .map_err(|e| self.err(format!("cannot create {}: {e}", partial.display())))?;
        let (file, pending) = created.into_parts();
        Ok(FileUpload {
            region: self.clone(),
            file: tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(file)),
            partial,
            pending,
            written: 0,
            flushed_to: 0,
        })
    }

    /// Opens `rel` for reading (a regular file inside the region, nothing else) and says its size.
    pub(super) async fn open_file(&self, rel: &str) -> Result<(Arc<std::fs::File>, PathBuf, u64)> {
        let path = self.root.display_path(rel);
        let (root, owned) = (self.root.clone(), rel.to_string());
        let f = tokio::task::spawn_blocking(move || root.open(&owned))
            .await
            .map_err(|e| self.err(format!("cannot open {}: {e}", path.display())))?
            .map_err(|e| self.err(format!("cannot open {}: {e}", path.display())))?;
        let size = f
            .metadata()
            .map_err(|e| self.err(format!("cannot open {}: {e}", path.display())))?
            .len();
        Ok((Arc::new(f), path, size))
    }

    /// Every key below `below` (checked, relative), recursively: those that follow fleetsnap's
    /// names, and those that do not (never entered or opened).
    pub(super) async fn list(&self, below: &str) -> Result<(Vec<String>, Vec<String>)> {
        let (mut out, mut refused) = (Vec::new(), Vec::new());
        if !self.root.dir_inside(below) {
            let start = self.root.display_path(below);
            if std::fs::symlink_metadata(&start).is_err() {
                return Ok((out, refused));
            }
            return Err(self.err(format!(
                "{} is a symbolic link or not a directory: links inside a region are not followed",
                start.display()
            )));
        }
        let mut stack = vec![below.to_string()];
        while let Some(rel) = stack.pop() {
            let dir = self.root.display_path(&rel);
            let mut rd = match tokio::fs::read_dir(&dir).await {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !rel.is_empty() => {
                    continue;
                }
                Err(e) => {
                    return Err(self.err(format!("cannot list {}: {e}", dir.display())));
                }
            };
            while let Some(entry) = rd
                .next_entry()
                .await
                .map_err(|e| self.err(format!("cannot list {}: {e}", dir.display())))?
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                let key = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                if check_key(&key).is_err() {
                    refused.push(key);
                    continue;
                }
                // The entry's own type: a link is listed as what it is, never entered.
                if entry.file_type().await.map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(key);
                } else {
                    out.push(key);
                }
            }
        }
        Ok((out, refused))
    }

    /// Removes `rel` and the directories it leaves empty; one already gone is no error.
    pub(super) async fn delete(&self, rel: &str) -> Result<()> {
        let (root, owned) = (self.root.clone(), rel.to_string());
        let shown = self.shown(rel);
        tokio::task::spawn_blocking(move || root.remove(&owned))
            .await
            .map_err(|e| self.err(format!("cannot delete {}: {e}", shown.display())))?
            .map_err(|e| self.err(format!("cannot delete {}: {e}", shown.display())))
    }

    /// The size of `rel`, a regular file inside the region.
    pub(super) async fn size(&self, rel: &str) -> Result<u64> {
        let (root, owned) = (self.root.clone(), rel.to_string());
        let shown = self.shown(rel);
        tokio::task::spawn_blocking(move || root.size(&owned))
            .await
            .map_err(|e| self.err(format!("cannot stat {}: {e}", shown.display())))?
            .map_err(|e| self.err(format!("cannot stat {}: {e}", shown.display())))
    }
}

/// Reads up to `want` bytes of `f` on the blocking pool; empty at the end.
pub(super) async fn read_chunk(
    f: &Arc<std::fs::File>,
    path: &Path,
    want: u64,
) -> Result<Option<Bytes>> {
    let f = Arc::clone(f);
    let want = want.min(FILE_CHUNK as u64);
    // read_to_end fills spare capacity without zeroing it first.
    let read = tokio::task::spawn_blocking(move || {
        let mut buf = Vec::with_capacity(want as usize);
        std::io::Read::read_to_end(&mut std::io::Read::take(&*f, want), &mut buf).map(|_| buf)
    })
    .await
    .map_err(|e| Error::file("cannot read", path.to_path_buf(), std::io::Error::other(e)))?
    .map_err(|e| Error::file("cannot read", path.to_path_buf(), e))?;
    Ok((!read.is_empty()).then(|| Bytes::from(read)))
}

/// State of a file upload.
pub struct FileUpload {
    region: Region,
    file: tokio::io::BufWriter<tokio::fs::File>,
    partial: PathBuf,
    pending: Pending,
    written: u64,
    /// Bytes already handed to the disk's writeback (`sync_file_range`).
    flushed_to: u64,
}

/// Written bytes start their way to the disk every this many, so a large snapshot does not pile
/// up dirty pages on the host until its final fsync.
const WRITEBACK_EVERY: u64 = 16 << 20;

impl FileUpload {
    /// Appends bytes.
    pub(super) async fn write(&mut self, data: Bytes) -> Result<()> {
        self.written += data.len() as u64;
        let result = self.file.write_all(&data).await;
        let result = match result {
            Ok(()) if self.written - self.flushed_to >= WRITEBACK_EVERY => self.writeback().await,
            r => r,
        };
        result.map_err(|e| {
            self.region.err(format!(
                "cannot write {}: {e}{}",
                self.partial.display(),
                if e.raw_os_error() == Some(28) {
                    " (disk full: free space in the destination)"
                } else {
                    ""
                }
            ))
        })
    }

    /// Starts writeback of what was written since the last time, without waiting for it.
    async fn writeback(&mut self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        self.file.flush().await?;
        let (from, to) = (self.flushed_to, self.written);
        // Only a hint, its result ignored: where the file system does not support it, the final
        // fsync does it all.
        // SAFETY: the descriptor is this upload's open file; the call reads no memory of ours.
        unsafe {
            libc::sync_file_range(
                self.file.get_ref().as_raw_fd(),
                from as libc::off64_t,
                (to - from) as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        self.flushed_to = to;
        Ok(())
    }

    /// Syncs the file, checks its size and renames it into place; returns the size.
    pub(super) async fn finish(self) -> Result<u64> {
        let FileUpload {
            region,
            mut file,
            partial,
            pending,
            written,
            ..
        } = self;
        let io =
            |e: std::io::Error| region.err(format!("cannot finish {}: {e}", partial.display()));
        let done = async {
            file.flush().await?;
            file.get_mut().sync_all().await?;
            file.get_ref().metadata().await.map(|m| m.len())
        }
        .await;
        drop(file);
        let size = match done {
            Ok(size) => size,
            Err(e) => {
                pending.abort();
                return Err(io(e));
            }
        };
        if size != written {
            pending.abort();
            return Err(region.err(format!(
                "{} holds {size} bytes after writing {written}",
                partial.display()
            )));
        }
        pending.commit().map_err(io)?;
        Ok(written)
    }

    /// Removes the `.partial` file.
    pub(super) fn abort(self) {
        let FileUpload { pending, file, .. } = self;
        drop(file);
        pending.abort();
    }
}
