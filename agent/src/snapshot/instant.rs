//! Acting at an instant. A `simultaneous` window hands every agent one Unix millisecond; how
//! close the agents' first commands land to it is the window's start skew.
//!
//! Waking on time is the easy half. At the instant every agent of the window wakes and every
//! source node forks, so an agent that wakes a little late finds the cores taken by the forks of
//! the agents that woke first, and waits behind them. The act therefore runs on a thread of its
//! own that asks for a real-time (`SCHED_FIFO`) priority: such a thread runs as soon as its
//! sleep ends, ahead of every ordinary process. It sleeps, sends a few bytes, and ends; it
//! never spins. Without the privilege (`CAP_SYS_NICE`) the thread keeps an ordinary priority
//! and the agent says so once in its log.

use std::sync::Once;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::runtime::Handle;

use crate::error::{Error, Result};

/// Runs `act` at the Unix millisecond `at` (at once if that has passed) and returns its result
/// with the instant it finished: the instant the start command left, for an act that sends one.
/// `act` gets the runtime's handle, to drive the agent's own sockets from its thread.
pub async fn at_instant<T, F>(at: i64, act: F) -> Result<(T, OffsetDateTime)>
where
    T: Send + 'static,
    F: FnOnce(&Handle) -> T + Send + 'static,
{
    let handle = Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("fleetsnap-instant".into())
        .spawn(move || {
            raise_priority();
            sleep_until_ms(at);
            let out = act(&handle);
            let _ = tx.send((out, OffsetDateTime::now_utc()));
        })
        .map_err(|e| {
            Error::Input(format!(
                "cannot start the thread that waits for the window's instant: {e}"
            ))
        })?;
    rx.await.map_err(|_| {
        Error::Input("the thread that waits for the window's instant ended without acting".into())
    })
}

/// Sleeps until the Unix millisecond `at`. A sleep may end early on a signal, so it loops.
fn sleep_until_ms(at: i64) {
    let target = i128::from(at) * 1_000_000;
    loop {
        let left = target - OffsetDateTime::now_utc().unix_timestamp_nanos();
        if left <= 0 {
            return;
        }
        std::thread::sleep(Duration::from_nanos(left as u64));
    }
}

/// Asks for `SCHED_FIFO` on the calling thread; says once per process when it is refused.
fn raise_priority() {
    static REFUSED: Once = Once::new();
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: `pthread_self` names the calling thread, and `param` outlives the call.
    let rc = unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
    if rc != 0 {
        REFUSED.call_once(|| {
            tracing::warn!(
                "cannot act at a window's instant with real-time priority ({}); start skew will \
                 include the wait for a free core: grant the agent CAP_SYS_NICE",
                std::io::Error::from_raw_os_error(rc)
            );
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn acts_at_the_instant_not_before() {
        let at = (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64 + 30;
        let (woke, done) = at_instant(at, |_| OffsetDateTime::now_utc()).await.unwrap();
        let at_ns = i128::from(at) * 1_000_000;
        assert!(
            woke.unix_timestamp_nanos() >= at_ns,
            "acted before the instant"
        );
        assert!(done >= woke);
    }

    #[tokio::test]
    async fn a_past_instant_acts_at_once() {
        let (v, _) = at_instant(0, |_| 7).await.unwrap();
        assert_eq!(v, 7);
    }
}
