//! The lab's network: one network namespace per host, each with an address on a bridge that
//! lives in a namespace of its own (the "switch"), so nothing is added to the machine's own
//! namespace. Every name carries the harness's pid; `sweep` removes what a harness that died
//! left behind. Partitions are iptables rules inside the hosts' namespaces.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

/// The prefix of every namespace a lab makes.
const PREFIX: &str = "fsc";

/// The subnet every lab uses; labs do not meet, each has its own bridge.
const SUBNET: &str = "10.77.0";

/// Runs `ip ARGS…`, failing with its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}: install it (scripts/setup.sh chaos)"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// One host: a namespace and its address.
#[derive(Clone, Debug)]
pub struct Host {
    /// The lab's name for it (`coord-1`, `redis-a0`, `region-near`, `client`).
    pub name: String,
    /// The namespace (`fsc<pid>-<name>`).
    pub ns: String,
    /// Its address on the bridge.
    pub ip: String,
}

impl Host {
    /// A command run inside this host's namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }

    /// `ADDRESS:PORT` on this host.
    pub fn addr(&self, port: u16) -> String {
        format!("{}:{port}", self.ip)
    }

    /// Runs `iptables ARGS…` inside the namespace.
    pub fn iptables(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["netns", "exec", &self.ns, "iptables", "-w"];
        all.extend_from_slice(args);
        run("ip", &all)
    }
}

/// The namespaces of one harness run. Dropping it deletes them (and so every interface in them).
pub struct Lab {
    switch: String,
    /// The hosts, in the order they were added.
    pub hosts: Vec<Host>,
}

impl Lab {
    /// An empty lab: the switch namespace and its bridge.
    pub fn new() -> anyhow::Result<Self> {
        sweep();
        let switch = format!("{PREFIX}{}-switch", std::process::id());
        ip(&["netns", "add", &switch])?;
        let lab = Self {
            switch,
            hosts: Vec::new(),
        };
        ip(&["-n", &lab.switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &lab.switch, "link", "set", "br0", "up"])?;
        Ok(lab)
    }

    /// Adds a host with the next address.
    pub fn add(&mut self, name: &str) -> anyhow::Result<Host> {
        let n = self.hosts.len() + 10;
        if n > 250 {
            bail!("a lab holds at most 240 hosts");
        }
        let ns = format!("{PREFIX}{}-{name}", std::process::id());
        ip(&["netns", "add", &ns])?;
        let host = Host {
            name: name.into(),
            ns: ns.clone(),
            ip: format!("{SUBNET}.{n}"),
        };
        // Pushed at once, so a failure below still deletes the namespace.
        self.hosts.push(host.clone());
        let port = format!("p{n}");
        ip(&[
            "-n",
            &self.switch,
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns,
        ])?;
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &port,
            "master",
            "br0",
            "up",
        ])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/24", host.ip),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(host)
    }

    /// The host named `name`.
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name} in the lab"))
    }

    /// Drops what `from` sends to `to` (`both`: and what `to` sends to `from`). Rules go into
    /// OUTPUT of the sender, so established connections stall as on a real cut link.
    pub fn partition(&self, from: &Host, to: &Host, both: bool) -> anyhow::Result<()> {
        from.iptables(&["-A", "OUTPUT", "-d", &to.ip, "-j", "DROP"])?;
        if both {
            to.iptables(&["-A", "OUTPUT", "-d", &from.ip, "-j", "DROP"])?;
        }
        Ok(())
    }

    /// Removes every partition.
    pub fn heal(&self) -> anyhow::Result<()> {
        for h in &self.hosts {
            h.iptables(&["-F", "OUTPUT"])?;
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = ip(&["netns", "del", &h.ns]);
        }
        let _ = ip(&["netns", "del", &self.switch]);
    }
}

/// The file a namespace is bound to, for `setns`.
pub fn ns_path(ns: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(ns)
}

/// Moves the calling thread into `ns`: sockets it makes afterwards live there.
pub fn enter(ns: &str) -> anyhow::Result<()> {
    use std::os::unix::io::AsRawFd;
    let f = std::fs::File::open(ns_path(ns)).with_context(|| format!("namespace {ns}"))?;
    // SAFETY: setns on a descriptor of a namespace file that stays open for the call.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {ns}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a thread inside `ns` (to bind or connect a socket there).
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns)?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("a thread in {ns} panicked"))?
    })
}

/// Deletes the namespaces of harness runs whose process is gone.
pub fn sweep() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: kill with signal 0 only asks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        if !alive {
            let _ = ip(&["netns", "del", name]);
        }
    }
}
