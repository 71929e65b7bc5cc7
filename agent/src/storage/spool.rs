//! A per-destination queue that never blocks its producer: chunks stay in memory up to a cap,
//! then go to a spool file on local disk, up to a limit. A slow destination therefore never
//! stalls the Redis side; a destination that falls too far behind fails alone.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::Notify;

/// Read-back size from the spool file.
const SPOOL_READ: usize = 1 << 20;

/// Limits of one queue.
#[derive(Clone, Debug)]
pub struct SpoolLimits {
    /// Bytes held in memory before spilling to disk.
    pub memory_bytes: usize,
    /// Directory for spool files.
    pub dir: PathBuf,
    /// Largest spool file; past it the destination fails.
    pub max_bytes: u64,
}

/// What the consumer gets.
#[derive(Debug)]
pub enum Item {
    /// The next bytes.
    Data(Bytes),
    /// The producer is done and the object verified: make it visible.
    Commit,
    /// The object must not be stored; the reason.
    Abort(String),
}

struct SpoolFile {
    file: File,
    path: PathBuf,
    write_pos: u64,
    read_pos: u64,
    /// Whether read ranges are given back to the file system (hole punching works here); if not,
    /// the limit applies to the whole file until it drains.
    reclaims: bool,
}

impl SpoolFile {
    /// Bytes this file holds on disk for the limit: the backlog, or the whole file when read
    /// ranges cannot be given back.
    fn held(&self) -> u64 {
        if self.reclaims {
            self.write_pos - self.read_pos
        } else {
            self.write_pos
        }
    }

    /// Gives the read range back to the file system.
    fn reclaim(&mut self, from: u64, len: u64) {
        use std::os::fd::AsRawFd;
        if !self.reclaims {
            return;
        }
        // SAFETY: a plain system call on a file descriptor this struct owns.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                from as libc::off_t,
                len as libc::off_t,
            )
        };
        if r != 0 {
            self.reclaims = false;
        }
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        std::fs::remove_file(&self.path).ok();
    }
}

#[derive(Default)]
struct State {
    memory: VecDeque<Bytes>,
    memory_bytes: usize,
    file: Option<SpoolFile>,
    end: Option<Result<(), String>>,
    failed: Option<String>,
    peak_spooled: u64,
}

/// A single-producer, single-consumer queue with a disk overflow.
pub struct SpoolQueue {
    state: Mutex<State>,
    notify: Notify,
    limits: SpoolLimits,
    name: String,
}

impl SpoolQueue {
    /// A queue for the destination called `name`.
    pub fn new(name: String, limits: SpoolLimits) -> Self {
        Self {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            limits,
            name,
        }
    }

    /// Appends bytes without blocking on the consumer. Returns false once the queue has failed
    /// (the destination is out of the snapshot).
    pub fn push(&self, data: Bytes) -> bool {
        let mut st = self.state.lock().expect("spool lock");
        if st.failed.is_some() {
            return false;
        }
        let spilling = st.file.as_ref().is_some_and(|f| f.write_pos > f.read_pos);
        if !spilling && st.memory_bytes + data.len() <= self.limits.memory_bytes {
            st.memory_bytes += data.len();
            st.memory.push_back(data);
        } else if let Err(e) = self.spill(&mut st, &data) {
            st.failed = Some(e);
            st.memory.clear();
            st.memory_bytes = 0;
            st.file = None;
            drop(st);
            self.notify.notify_one();
            return false;
        }
        drop(st);
        self.notify.notify_one();
        true
    }

    fn spill(&self, st: &mut State, data: &[u8]) -> Result<(), String> {
        if st.file.is_none() {
            std::fs::create_dir_all(&self.limits.dir).map_err(|e| {
                format!(
                    "cannot create the spool directory {}: {e}",
                    self.limits.dir.display()
                )
            })?;
            let path = self.limits.dir.join(format!(
                "fleetsnap-spool-{}-{:016x}",
                std::process::id(),
                rand::random::<u64>()
            ));
            let file = File::options()
                .create_new(true)
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| format!("cannot create the spool file {}: {e}", path.display()))?;
            st.file = Some(SpoolFile {
                file,
                path,
                write_pos: 0,
                read_pos: 0,
                reclaims: true,
            });
        }
        let f = st.file.as_mut().expect("created");
        let used = f.write_pos - f.read_pos + data.len() as u64;
        if f.held() + data.len() as u64 > self.limits.max_bytes {
            return Err(format!(
                "the destination fell {} MiB behind the source and the spool limit is {} MiB: it is too slow or stalled; raise --spool-max or fix the destination",
                used >> 20,
                self.limits.max_bytes >> 20
            ));
        }
        f.file.write_all_at(data, f.write_pos).map_err(|e| {
            let full = if e.raw_os_error() == Some(28) {
                " (the spool disk is full: free space or point --spool-dir at a larger disk)"
            } else {
                ""
            };
            format!(
                "cannot write the spool file {}: {e}{full}",
                f.path.display()
            )
        })?;
        f.write_pos += data.len() as u64;
        st.peak_spooled = st.peak_spooled.max(f.write_pos - f.read_pos);
        Ok(())
    }

    /// Ends the stream: `Ok` commits, `Err` aborts with the reason.
    pub fn end(&self, outcome: Result<(), String>) {
        self.state.lock().expect("spool lock").end = Some(outcome);
        self.notify.notify_one();
    }

    /// Marks the consumer as failed so the producer stops feeding it and memory is released.
    pub fn fail(&self, reason: String) {
        let mut st = self.state.lock().expect("spool lock");
        st.failed.get_or_insert(reason);
        st.memory.clear();
        st.memory_bytes = 0;
        st.file = None;
    }

    /// The reason the queue failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.state.lock().expect("spool lock").failed.clone()
    }

    /// The most bytes that waited on disk at once.
    pub fn peak_spooled(&self) -> u64 {
        self.state.lock().expect("spool lock").peak_spooled
    }

    /// Waits for the next item.
    pub async fn pop(&self) -> Item {
        loop {
            {
                let mut st = self.state.lock().expect("spool lock");
                if let Some(reason) = &st.failed {
                    return Item::Abort(reason.clone());
                }
                if let Some(b) = st.memory.pop_front() {
                    st.memory_bytes -= b.len();
                    return Item::Data(b);
                }
                if let Some(f) = st.file.as_mut()
                    && f.write_pos > f.read_pos
                {
                    let n = (f.write_pos - f.read_pos).min(SPOOL_READ as u64) as usize;
                    let mut buf = vec![0; n];
                    if let Err(e) = f.file.read_exact_at(&mut buf, f.read_pos) {
                        let reason = format!(
                            "cannot read back the spool file {} for {}: {e}",
                            f.path.display(),
                            self.name
                        );
                        st.failed = Some(reason.clone());
                        return Item::Abort(reason);
                    }
                    let from = f.read_pos;
                    f.read_pos += n as u64;
                    f.reclaim(from, n as u64);
                    if f.read_pos == f.write_pos {
                        f.file.set_len(0).ok();
                        f.read_pos = 0;
                        f.write_pos = 0;
                    }
                    return Item::Data(Bytes::from(buf));
                }
                if let Some(end) = st.end.take() {
                    return match end {
                        Ok(()) => Item::Commit,
                        Err(reason) => Item::Abort(reason),
                    };
                }
            }
            self.notify.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(dir: &std::path::Path, max: u64) -> SpoolLimits {
        SpoolLimits {
            memory_bytes: 10,
            dir: dir.to_path_buf(),
            max_bytes: max,
        }
    }

    #[tokio::test]
    async fn order_is_kept_across_memory_and_disk() {
        let dir = tempfile::tempdir().unwrap();
        let q = SpoolQueue::new("t".into(), limits(dir.path(), 1 << 20));
        let mut expected = Vec::new();
        for i in 0..50u8 {
            let chunk = vec![i; (i as usize % 7) + 1];
            expected.extend_from_slice(&chunk);
            assert!(q.push(Bytes::from(chunk)));
        }
        assert!(q.peak_spooled() > 0, "nothing was spooled");
        q.end(Ok(()));
        let mut got = Vec::new();
        loop {
            match q.pop().await {
                Item::Data(b) => got.extend_from_slice(&b),
                Item::Commit => break,
                Item::Abort(r) => panic!("{r}"),
            }
        }
        assert_eq!(got, expected);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "spool file kept while queue lives"
        );
        drop(q);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "spool file left behind"
        );
    }

    #[tokio::test]
    async fn the_limit_applies_to_the_backlog_not_to_what_passed_through() {
        let dir = tempfile::tempdir().unwrap();
        let q = SpoolQueue::new("steady".into(), limits(dir.path(), 3 << 20));
        // The consumer stays about one chunk behind: the file never drains, but the backlog is small.
        let chunk = Bytes::from(vec![7u8; 1 << 20]);
        assert!(q.push(chunk.clone()));
        for _ in 0..20 {
            assert!(
                q.push(chunk.clone()),
                "failed with a small backlog: {:?}",
                q.failure()
            );
            assert!(matches!(q.pop().await, Item::Data(_)));
        }
    }

    #[tokio::test]
    async fn a_full_spool_fails_the_destination_only() {
        let dir = tempfile::tempdir().unwrap();
        let q = SpoolQueue::new("slow".into(), limits(dir.path(), 32));
        let mut accepted = 0;
        for _ in 0..10 {
            if q.push(Bytes::from(vec![0u8; 8])) {
                accepted += 1;
            }
        }
        assert!(accepted < 10);
        match q.pop().await {
            Item::Abort(r) => assert!(r.contains("--spool-max"), "{r}"),
            other => panic!("expected abort, got {other:?}"),
        }
    }
}
