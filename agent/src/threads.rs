//! Threads that do the agent's heavy work (compression, hashing, key census, decoding) run
//! below the node's own priority: when cores are short, the Redis process and its fork, which
//! the agent reads from or loads into, run first.

/// Lowers the calling thread's priority (nice 10). Threads it starts afterwards (zstd's
/// workers) inherit it.
pub(crate) fn yield_cpu() {
    // SAFETY: gettid and setpriority on the calling thread only.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
    }
}

/// Starts `f` at once on a thread of its own at [`yield_cpu`]'s priority; its result, to await.
pub(crate) fn spawn_yielding<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> impl std::future::Future<Output = std::io::Result<T>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            yield_cpu();
            let _ = tx.send(f());
        });
    let name = name.to_string();
    async move {
        spawned?;
        rx.await
            .map_err(|_| std::io::Error::other(format!("the {name} thread stopped unexpectedly")))
    }
}
