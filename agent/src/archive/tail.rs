//! A restore's tail from the archive, written by a task of its own from the moment the target
//! is resolved, so the base is fetched (and, for `replace`, loaded by the node) while the
//! segments are read. Whoever uses the tail waits for it with [`ArchiveTail::ready`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use super::read::{PointInTime, TailPlan};
use crate::error::{Error, Result};

/// A tail being written, or written; cloning shares it.
#[derive(Clone)]
pub struct ArchiveTail {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    state: Mutex<State>,
    /// Holds the file; removed with the last clone.
    _dir: tempfile::TempDir,
}

enum State {
    Writing(JoinHandle<Result<PointInTime>>),
    Done(PointInTime),
    Failed(String),
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Nobody waits for it any more: its directory goes now, so the writer stops too.
        if let State::Writing(h) = self.state.get_mut() {
            h.abort();
        }
    }
}

impl std::fmt::Debug for ArchiveTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ArchiveTail({})", self.inner.path.display())
    }
}

impl ArchiveTail {
    /// Starts writing `plan`'s tail into `dir`.
    pub(super) fn start(plan: TailPlan, dir: tempfile::TempDir) -> Self {
        let path = dir.path().join("archive.tail");
        let task = {
            let path = path.clone();
            tokio::spawn(async move { plan.write(&path).await })
        };
        Self {
            inner: Arc::new(Inner {
                path,
                state: Mutex::new(State::Writing(task)),
                _dir: dir,
            }),
        }
    }

    /// Waits until the tail is written: what the target resolved to, or why the tail could not
    /// be built (the first caller gets the error itself, later ones its text).
    pub async fn ready(&self) -> Result<PointInTime> {
        let mut state = self.inner.state.lock().await;
        if let State::Writing(task) = &mut *state {
            let r = match task.await {
                Ok(r) => r,
                Err(e) => Err(Error::Failed(format!(
                    "writing the archive's tail failed: {e}"
                ))),
            };
            *state = match &r {
                Ok(p) => State::Done(p.clone()),
                Err(e) => State::Failed(e.to_string()),
            };
            return r;
        }
        match &*state {
            State::Done(p) => Ok(p.clone()),
            State::Failed(e) => Err(Error::Failed(e.clone())),
            State::Writing(_) => unreachable!("a finished task is replaced above"),
        }
    }

    /// The tail file: complete once [`ready`](Self::ready) has answered `Ok`.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}
