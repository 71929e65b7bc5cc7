//! The fault API on its own, on a lab of two hosts: partitions cut and heal, a paused process
//! answers nothing until resumed, and the proxy delays, stalls and cuts what it carries. Needs
//! root (network namespaces), as the suite does.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use fleetsnap_chaos::net::{Host, Lab, in_ns};
use fleetsnap_chaos::proc::{Proc, Spec};
use fleetsnap_chaos::proxy::{Faults, Proxy};

/// One request and its reply over a fresh connection made on `from`; `None` when no connection
/// or no reply comes within `limit`.
fn ping(from: &Host, to: &str, limit: Duration) -> Option<Duration> {
    let to: std::net::SocketAddr = to.parse().expect("address");
    in_ns(&from.ns, move || {
        let started = Instant::now();
        let mut s = TcpStream::connect_timeout(&to, limit).ok()?;
        s.set_read_timeout(Some(limit)).ok()?;
        s.write_all(b"PING\r\n").ok()?;
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).ok()?;
        (&buf == b"+PONG\r\n").then(|| started.elapsed())
    })
    .expect("a thread in the namespace")
}

/// `ping` on a blocking thread, off the runtime the proxy runs on.
async fn ping_blocking(from: &Host, to: &str, limit: Duration) -> Option<Duration> {
    let (from, to) = (from.clone(), to.to_string());
    tokio::task::spawn_blocking(move || ping(&from, &to, limit))
        .await
        .expect("the ping thread")
}

fn redis_on(host: &Host, dir: &std::path::Path) -> Proc {
    let mut p = Proc::new(
        "redis",
        Spec::redis(host, dir.join(format!("redis-{}.log", host.name)), &[]),
    );
    p.start().expect("redis-server starts");
    p
}

fn wait_up(from: &Host, to: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while ping(from, to, Duration::from_millis(500)).is_none() {
        assert!(Instant::now() < deadline, "redis at {to} never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_pauses_and_the_proxy_do_what_they_say() {
    let dir = tempfile::tempdir().unwrap();
    let mut lab = Lab::new().unwrap();
    let a = lab.add("a").unwrap();
    let b = lab.add("b").unwrap();
    let redis = redis_on(&b, dir.path());
    let target = b.addr(6379);
    wait_up(&a, &target);

    // A partition one way, from a to b: nothing gets through; healed, it does again.
    lab.partition(&a, &b, false).unwrap();
    assert!(ping(&a, &target, Duration::from_millis(700)).is_none());
    lab.heal().unwrap();
    assert!(ping(&a, &target, Duration::from_secs(2)).is_some());

    // A paused server keeps its socket but answers nothing until resumed.
    redis.pause();
    assert!(ping(&a, &target, Duration::from_millis(700)).is_none());
    redis.resume();
    assert!(ping(&a, &target, Duration::from_secs(2)).is_some());

    // The proxy on b in front of redis: latency both ways, a stall, and a link that is down.
    let proxy = Proxy::start(&b, 9900, target.parse().unwrap(), 7)
        .await
        .unwrap();
    let via = proxy.listen.clone();
    let plain = ping_blocking(&a, &via, Duration::from_secs(2))
        .await
        .expect("through the proxy");
    proxy.set(Faults {
        latency: Duration::from_millis(150),
        ..Faults::default()
    });
    let slow = ping_blocking(&a, &via, Duration::from_secs(3))
        .await
        .expect("through the slow proxy");
    assert!(
        slow >= Duration::from_millis(300),
        "150 ms each way took {slow:?} (plain: {plain:?})"
    );
    proxy.clear();
    proxy.stall(Duration::from_millis(800));
    let stalled = ping_blocking(&a, &via, Duration::from_secs(3))
        .await
        .expect("through the stalled proxy, once the stall ends");
    assert!(stalled >= Duration::from_millis(700), "{stalled:?}");
    proxy.set(Faults {
        down: true,
        ..Faults::default()
    });
    let down = ping_blocking(&a, &via, Duration::from_secs(1)).await;
    assert!(down.is_none(), "a link that is down carried a reply");
    assert!(proxy.carried() > 0);
}
