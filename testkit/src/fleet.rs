//! Real fleetsnap processes for tests: coordinators, agents and the `fleetsnap` CLI, with
//! certificates from `fleetsnap certs init`, configs and logs in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::{Process, free_port, output_within, poll_until};

/// A binary built next to the running test (`target/debug/NAME`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe
        .parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run the tests with `cargo test --workspace` (or `cargo build --bins` first)",
        path.display()
    );
    path
}

/// A fleet's working directory: certificates, configs, data and logs.
pub struct FleetDir {
    dir: tempfile::TempDir,
}

impl FleetDir {
    /// A new directory with certificates for coordinators `peers`, `agents` and admin `admin`.
    pub fn new(peers: &[u64], agents: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let fleet = Self { dir };
        fleet.certs("certs", peers, agents)?;
        Ok(fleet)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `fleetsnap certs init` into `sub` (a second CA when `sub` differs from `certs`).
    pub fn certs(&self, sub: &str, peers: &[u64], agents: &[&str]) -> anyhow::Result<PathBuf> {
        let out = self.path().join(sub);
        let peers: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
        let o = Command::new(bin("fleetsnap"))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .args(["certs", "init", "--dir"])
            .arg(&out)
            .args([
                "--peers",
                &peers.join(","),
                "--agents",
                &agents.join(","),
                "--force",
            ])
            .output()?;
        if !o.status.success() {
            bail!("certs init: {}", String::from_utf8_lossy(&o.stderr));
        }
        Ok(out)
    }

    /// `[tls]` lines for `role-name` from the certificates in `sub`.
    pub fn tls_section(&self, sub: &str, stem: &str) -> String {
        let d = self.path().join(sub);
        format!(
            "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            d.join("ca.pem").display(),
            d.join(format!("{stem}.pem")).display(),
            d.join(format!("{stem}.key")).display()
        )
    }

    /// The CLI as admin, talking to `coordinators`.
    pub fn cli(&self, coordinators: &[String]) -> Cli {
        let d = self.path().join("certs");
        Cli {
            env: vec![
                ("FLEETSNAP_CA".into(), d.join("ca.pem")),
                ("FLEETSNAP_CERT".into(), d.join("admin-admin.pem")),
                ("FLEETSNAP_KEY".into(), d.join("admin-admin.key")),
            ],
            coordinators: coordinators.to_vec(),
        }
    }
}

/// Appends TOML tables to a config file.
fn append(config: &Path, toml: &str) -> anyhow::Result<()> {
    let mut text = std::fs::read_to_string(config)?;
    text += "\n";
    text += toml;
    std::fs::write(config, text)?;
    Ok(())
}

/// Raft timing and compaction for test coordinators.
#[derive(Clone, Debug)]
pub struct CoordinatorOptions {
    /// `[raft] snapshot_every`.
    pub snapshot_every: u64,
    /// `[jobs] lease_seconds`.
    pub lease_seconds: u64,
    /// Run with `--insecure` (and no `[tls]`).
    pub insecure: bool,
}

impl Default for CoordinatorOptions {
    fn default() -> Self {
        Self {
            snapshot_every: 1000,
            lease_seconds: 15,
            insecure: false,
        }
    }
}

/// A coordinator process.
pub struct Coordinator {
    /// Node id.
    pub id: u64,
    /// `127.0.0.1:PORT`.
    pub address: String,
    /// Its config file.
    pub config: PathBuf,
    /// Its log.
    pub log: PathBuf,
    /// Its data directory.
    pub data_dir: PathBuf,
    insecure: bool,
    process: Option<Process>,
}

impl Coordinator {
    /// Writes the config of node `id`; `initial` lists the members of a new cluster (empty: the
    /// node waits to be added).
    pub fn configure(
        fleet: &FleetDir,
        id: u64,
        initial: &[(u64, String)],
        opts: &CoordinatorOptions,
    ) -> anyhow::Result<Self> {
        let address = initial
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, a)| a.clone())
            .unwrap_or_else(|| format!("127.0.0.1:{}", free_port()));
        let data_dir = fleet.path().join(format!("coordinator-{id}"));
        let mut text = format!(
            "node_id = {id}\nlisten = \"{address}\"\ndata_dir = \"{}\"\n",
            data_dir.display()
        );
        for (i, a) in initial {
            text += &format!("[[initial_members]]\nid = {i}\naddress = \"{a}\"\n");
        }
        text += &format!(
            "[raft]\nsnapshot_every = {}\n[jobs]\nlease_seconds = {}\n",
            opts.snapshot_every, opts.lease_seconds
        );
        if !opts.insecure {
            text += &fleet.tls_section("certs", &format!("peer-{id}"));
        }
        let config = fleet.path().join(format!("coordinator-{id}.toml"));
        std::fs::write(&config, text)?;
        Ok(Self {
            id,
            address,
            config,
            log: fleet.path().join(format!("coordinator-{id}.log")),
            data_dir,
            insecure: opts.insecure,
            process: None,
        })
    }

    /// Appends TOML tables to its config (`[telemetry]`), for its next start.
    pub fn add_config(&mut self, toml: &str) -> anyhow::Result<()> {
        append(&self.config, toml)
    }

    /// Addresses for `n` new nodes numbered from 1.
    pub fn addresses(n: u64) -> Vec<(u64, String)> {
        (1..=n)
            .map(|i| (i, format!("127.0.0.1:{}", free_port())))
            .collect()
    }

    /// Starts (or restarts) the process and waits until its port accepts connections.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new(bin("fleetsnap-coordinator"));
        cmd.env("AWS_EC2_METADATA_DISABLED", "true");
        cmd.arg("--config").arg(&self.config);
        if self.insecure {
            cmd.arg("--insecure");
        }
        // FLEETSNAP_LOG in the test's environment reaches the coordinators (say, to see openraft's
        // elections: `info,openraft=info`).
        let filter = std::env::var("FLEETSNAP_LOG").unwrap_or_else(|_| "info,openraft=warn".into());
        cmd.env("FLEETSNAP_LOG", filter)
            .env("NO_COLOR", "1")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        let mut p = Process::spawn(&mut cmd, "start fleetsnap-coordinator")?;
        let address = self.address.clone();
        let r = poll_until("coordinator port open", Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(&address)
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        if let Some(status) = p.exited() {
            bail!(
                "coordinator {} exited ({status}):\n{}",
                self.id,
                self.log_text()
            );
        }
        r?;
        self.process = Some(p);
        Ok(())
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(Process::id)
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts coordinator 1 alone (single-node mode) and waits until it leads; returns it and an
/// admin CLI pointed at it.
pub async fn single_node(
    fleet: &FleetDir,
    opts: &CoordinatorOptions,
) -> anyhow::Result<(Coordinator, Cli)> {
    let mut one = Coordinator::configure(fleet, 1, &Coordinator::addresses(1), opts)?;
    one.start().await?;
    let cli = fleet.cli(std::slice::from_ref(&one.address));
    if !opts.insecure {
        poll_until("coordinator 1 leads", Duration::from_secs(10), || async {
            cli.json(&["cluster", "status", "--json"]).ok()
        })
        .await?;
    }
    Ok((one, cli))
}

/// One Redis instance an agent watches.
pub struct Watched {
    /// Its name.
    pub name: String,
    /// Its URL.
    pub url: String,
    /// Its cluster.
    pub cluster: String,
    /// Its availability zone ("" for none).
    pub zone: String,
    /// More lines of its `[[instance]]` table (`start_command = "…"`).
    pub extra: String,
}

impl Watched {
    /// Instance `name` at `url` in `cluster`, in no zone.
    pub fn new(
        name: impl Into<String>,
        url: impl Into<String>,
        cluster: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            url: url.into(),
            cluster: cluster.into(),
            zone: String::new(),
            extra: String::new(),
        }
    }

    /// The same instance with a `start_command`, for `replace` restores.
    pub fn started_by(self, command: &str) -> Self {
        Self {
            extra: format!("{}start_command = {command:?}\n", self.extra),
            ..self
        }
    }

    /// The same instance in availability zone `zone`.
    pub fn in_zone(self, zone: &str) -> Self {
        Self {
            zone: zone.into(),
            ..self
        }
    }
}

/// An agent process.
pub struct Agent {
    /// Agent id.
    pub id: String,
    /// Its config.
    pub config: PathBuf,
    /// Its log.
    pub log: PathBuf,
    insecure: bool,
    process: Option<Process>,
    env: Vec<(String, String)>,
}

impl Agent {
    /// Sets an environment variable for the agent's next start (e.g.
    /// `AWS_SHARED_CREDENTIALS_FILE`).
    pub fn env(&mut self, key: &str, value: &str) {
        self.env.push((key.into(), value.into()));
    }

    /// Writes the config of agent `id`.
    pub fn configure(
        fleet: &FleetDir,
        id: &str,
        coordinators: &[String],
        watched: &[Watched],
        insecure: bool,
    ) -> anyhow::Result<Self> {
        let list: Vec<String> = coordinators.iter().map(|c| format!("\"{c}\"")).collect();
        let mut text = format!(
            "agent_id = \"{id}\"\ncoordinators = [{}]\n",
            list.join(", ")
        );
        if !insecure {
            text += &fleet.tls_section("certs", &format!("agent-{id}"));
        }
        for w in watched {
            text += &format!(
                "[[instance]]\nname = \"{}\"\nurl = \"{}\"\ncluster = \"{}\"\n",
                w.name, w.url, w.cluster
            );
            if !w.zone.is_empty() {
                text += &format!("zone = \"{}\"\n", w.zone);
            }
            text += &w.extra;
        }
        text += &format!(
            "[snapshot]\nspool_dir = \"{}\"\nidle_timeout_seconds = 30\n",
            fleet.path().display()
        );
        let config = fleet.path().join(format!("agent-{id}.toml"));
        std::fs::write(&config, text)?;
        Ok(Self {
            id: id.to_string(),
            config,
            log: fleet.path().join(format!("agent-{id}.log")),
            insecure,
            process: None,
            env: Vec::new(),
        })
    }

    /// Appends TOML tables to its config (`[drill]`, `[restore]`), for its next start.
    pub fn add_config(&mut self, toml: &str) -> anyhow::Result<()> {
        append(&self.config, toml)
    }

    /// Starts (or restarts) the agent.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new(bin("fleetsnap-agent"));
        cmd.env("AWS_EC2_METADATA_DISABLED", "true");
        cmd.args(["run", "--config"]).arg(&self.config);
        if self.insecure {
            cmd.arg("--insecure");
        }
        cmd.env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        self.process = Some(Process::spawn(&mut cmd, "start fleetsnap-agent")?);
        Ok(())
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The `fleetsnap` CLI with an admin certificate.
#[derive(Clone)]
pub struct Cli {
    env: Vec<(String, PathBuf)>,
    /// `--coordinator` values, in order.
    pub coordinators: Vec<String>,
}

impl Cli {
    /// Runs `fleetsnap --coordinator … ARGS`, bounded to 60 s.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut cmd = Command::new(bin("fleetsnap"));
        cmd.env("AWS_EC2_METADATA_DISABLED", "true");
        cmd.arg("--coordinator").arg(self.coordinators.join(","));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.args(args);
        output_within(&mut cmd, Duration::from_secs(60))
    }

    /// Runs and parses stdout as JSON; fails with stderr when the command fails.
    pub fn json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let o = self.run(args)?;
        if !o.status.success() {
            bail!(
                "fleetsnap {args:?} failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        serde_json::from_slice(&o.stdout).with_context(|| {
            format!(
                "fleetsnap {args:?} printed no JSON: {}",
                String::from_utf8_lossy(&o.stdout)
            )
        })
    }

    /// Runs and parses stdout as JSON whatever the exit status (commands that print a report
    /// and exit 1 on what it found); whether it exited 0, and the JSON.
    pub fn run_json(&self, args: &[&str]) -> anyhow::Result<(bool, serde_json::Value)> {
        let o = self.run(args)?;
        let doc = serde_json::from_slice(&o.stdout).with_context(|| {
            format!(
                "fleetsnap {args:?} printed no JSON: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })?;
        Ok((o.status.success(), doc))
    }

    /// `policy set` from TOML written to `dir/NAME.toml`.
    pub fn set_policy(&self, dir: &Path, name: &str, toml: &str) -> anyhow::Result<()> {
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(&file, toml)?;
        let o = self.run(&["policy", "set", "--file", &file.display().to_string()])?;
        if !o.status.success() {
            bail!("policy set {name}: {}", String::from_utf8_lossy(&o.stderr));
        }
        Ok(())
    }

    /// `backup run --policy P --wait 90 --json`: whether it exited 0 (every set complete) and
    /// the window's document.
    pub fn backup_run(&self, policy: &str) -> anyhow::Result<(bool, serde_json::Value)> {
        let o = self.run(&[
            "backup", "run", "--policy", policy, "--wait", "90", "--json",
        ])?;
        let doc = serde_json::from_slice(&o.stdout).with_context(|| {
            format!(
                "backup run printed no JSON: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })?;
        Ok((o.status.success(), doc))
    }

    /// Polls `status` (30 s at most) until the first cluster shows `shards` shards of `nodes`
    /// nodes each; those shards.
    pub async fn wait_for_shards(
        &self,
        shards: usize,
        nodes: usize,
    ) -> anyhow::Result<Vec<serde_json::Value>> {
        poll_until(
            &format!("{shards} shards of {nodes} nodes in the status"),
            Duration::from_secs(30),
            || async {
                let s = self.json(&["status", "--json"]).ok()?;
                let found = s["clusters"][0]["shards"].as_array()?.clone();
                (found.len() == shards
                    && found
                        .iter()
                        .all(|sh| sh["nodes"].as_array().is_some_and(|n| n.len() == nodes)))
                .then_some(found)
            },
        )
        .await
    }

    /// The same CLI talking to other coordinators.
    pub fn to(&self, coordinators: &[String]) -> Cli {
        Cli {
            env: self.env.clone(),
            coordinators: coordinators.to_vec(),
        }
    }
}

/// Runs `fleetsnap-agent restore ARGS` (bounded to 60 s) with extra environment; fails with its
/// stderr when it fails.
pub fn restore(args: &[&str], env: &[(&str, &Path)]) -> anyhow::Result<String> {
    let mut cmd = Command::new(bin("fleetsnap-agent"));
    cmd.env("AWS_EC2_METADATA_DISABLED", "true");
    cmd.arg("restore").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = output_within(&mut cmd, Duration::from_secs(60))?;
    if !o.status.success() {
        bail!("restore {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// How a restore is placed before a server starts on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placed {
    /// One RDB file (`--to-file`).
    Rdb,
    /// A Redis 7 AOF directory: the RDB and a consistent cut's tail (`--aof-dir`).
    AofDir,
}

/// Restores with `fleetsnap-agent restore ARGS…` to `at` (placed as `placed` says) and starts a
/// redis-server on what it placed.
pub async fn restore_and_serve(
    args: &[&str],
    env: &[(&str, &Path)],
    at: &Path,
    placed: Placed,
) -> anyhow::Result<crate::redis::RedisServer> {
    restore_and_serve_as(crate::redis::Flavour::Redis, args, env, at, placed).await
}

/// [`restore_and_serve`] with a server of `flavour` started on what was placed.
pub async fn restore_and_serve_as(
    flavour: crate::redis::Flavour,
    args: &[&str],
    env: &[(&str, &Path)],
    at: &Path,
    placed: Placed,
) -> anyhow::Result<crate::redis::RedisServer> {
    let flag = match placed {
        Placed::Rdb => "--to-file",
        Placed::AofDir => "--aof-dir",
    };
    let at_str = at.to_str().context("a UTF-8 restore path")?;
    let mut all = args.to_vec();
    all.extend([flag, at_str]);
    restore(&all, env)?;
    let at = Some(at.to_path_buf());
    let opts = match placed {
        Placed::Rdb => crate::redis::RedisOptions {
            rdb: at,
            flavour,
            ..Default::default()
        },
        Placed::AofDir => crate::redis::RedisOptions {
            aof_dir: at,
            flavour,
            ..Default::default()
        },
    };
    crate::redis::RedisServer::start_with(opts).await
}

/// Prints the tail of every process's log when the test fails (always with
/// `FLEETSNAP_TEST_LOGS=1`).
pub struct Logs(pub Vec<PathBuf>);

impl Logs {
    /// The logs of these coordinators and agents.
    pub fn of(coordinators: &[Coordinator], agents: &[Agent]) -> Self {
        Self(
            coordinators
                .iter()
                .map(|c| c.log.clone())
                .chain(agents.iter().map(|a| a.log.clone()))
                .collect(),
        )
    }
}

impl Drop for Logs {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("FLEETSNAP_TEST_LOGS").is_some() {
            for p in &self.0 {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(60).collect();
                eprintln!("--- {} ---", p.display());
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}
