//! The system under test, one process per role on its own host: three coordinators, a Redis
//! Cluster of three shards (a primary and a replica each) with an agent beside every node, and
//! two S3 regions (Garage), each behind a fault-injecting proxy on its host. The harness itself
//! runs on the `client` host: the CLI, the writer and the checker's scratch servers are there.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use fleetsnap_agent::redis::RedisTarget;
use fleetsnap_agent::redis::{Connection, Value};
use fleetsnap_testkit::fleet::{Cli, FleetDir, bin};
use fleetsnap_testkit::poll_until;
use fleetsnap_testkit::s3::{garage_bin, garage_config, garage_lay_out};

use crate::net::{Host, Lab};
use crate::proc::{Proc, Spec};
use crate::proxy::Proxy;

/// Ports, the same on every host (each has its own address).
pub use crate::layout::{REDIS_PORT, SHARDS};
pub const COORD_PORT: u16 = 7400;
const S3_PORT: u16 = 3900;
const PROXY_PORT: u16 = 9900;

/// Keys written to each shard before a scenario starts.
const PREFILL: usize = 3000;

/// The cluster's name in fleetsnap.
pub const CLUSTER: &str = "shop";

/// A coordinator.
pub struct Coord {
    pub id: u64,
    pub host: Host,
    pub proc: Proc,
}

impl Coord {
    /// `IP:PORT`.
    pub fn addr(&self) -> String {
        self.host.addr(COORD_PORT)
    }
}

/// A Redis node and its agent.
pub struct Node {
    pub host: Host,
    pub redis: Proc,
    pub agent: Proc,
    /// The agent's id.
    pub agent_id: String,
    /// The agent's spool directory.
    pub spool: PathBuf,
}

impl Node {
    /// `IP:PORT` of its Redis.
    pub fn addr(&self) -> String {
        self.host.addr(REDIS_PORT)
    }

    /// A connection to its Redis (from the client host).
    pub async fn conn(&self) -> anyhow::Result<Connection> {
        let t = RedisTarget::parse(&format!("redis://{}", self.addr()))?;
        Ok(Connection::connect(&t).await?)
    }

    /// One INFO field.
    pub async fn info(&self, section: &str, field: &str) -> anyhow::Result<Option<String>> {
        let mut c = self.conn().await?;
        let text = c.info(section).await?;
        Ok(fleetsnap_agent::redis::info_field(&text, field).map(str::to_string))
    }
}

/// An S3 region: Garage on its host, reached through the proxy.
pub struct Region {
    pub name: String,
    pub host: Host,
    pub garage: Proc,
    pub proxy: Proxy,
    config: PathBuf,
}

impl Region {
    /// The destination URL agents use (through the proxy).
    pub fn dest(&self) -> String {
        format!(
            "s3://fleet/chaos?region=garage&endpoint=http://{}&profile={}",
            self.proxy.listen, self.name
        )
    }

    fn garage_cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .host
            .command(garage_bin())
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .context("run garage")?;
        if !out.status.success() {
            bail!(
                "garage {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until its Garage daemon answers (`garage status`), after a restart.
    pub async fn wait_up(&self) -> anyhow::Result<()> {
        poll_until(
            &format!("region {} up", self.name),
            Duration::from_secs(60),
            || async { self.garage_cli(&["status"]).ok() },
        )
        .await?;
        Ok(())
    }
}

/// Everything; see the module documentation. Dropping it stops every process, then removes the
/// namespaces.
pub struct Fleet {
    // Field order is drop order: processes before the lab's namespaces.
    pub coords: Vec<Coord>,
    pub nodes: Vec<Node>,
    pub regions: Vec<Region>,
    pub cli: Cli,
    pub creds: PathBuf,
    pub dir: FleetDir,
    pub lab: Lab,
}

/// Agents' ids, one per Redis node.
fn agent_ids() -> Vec<String> {
    (0..SHARDS * 2).map(|i| format!("agent-{i}")).collect()
}

impl Fleet {
    /// Builds the lab's hosts (call before entering the client host).
    pub fn hosts() -> anyhow::Result<Lab> {
        let mut lab = Lab::new()?;
        lab.add("client")?;
        for i in 1..=3 {
            lab.add(&format!("coord-{i}"))?;
        }
        for i in 0..SHARDS * 2 {
            lab.add(&format!("node-{i}"))?;
        }
        for r in ["near", "far"] {
            lab.add(&format!("region-{r}"))?;
        }
        Ok(lab)
    }

    /// Starts every process on the lab's hosts and waits until the fleet reports the cluster's
    /// three shards with a replica in sync each. `seed` drives the proxies.
    pub async fn start(lab: Lab, seed: u64) -> anyhow::Result<Self> {
        let ids: Vec<u64> = vec![1, 2, 3];
        let agents = agent_ids();
        let agent_refs: Vec<&str> = agents.iter().map(String::as_str).collect();
        let dir = FleetDir::new(&ids, &agent_refs)?;
        let root = dir.path().to_path_buf();

        // Regions first: agents need their credentials.
        let mut regions = Vec::new();
        let mut creds = String::new();
        for (k, name) in ["near", "far"].into_iter().enumerate() {
            let host = lab.host(&format!("region-{name}")).clone();
            let r = start_region(&root, name, host, seed + k as u64).await?;
            creds += &format!(
                "[{name}]\naws_access_key_id = {}\naws_secret_access_key = {}\n\n",
                r.1, r.2
            );
            regions.push(r.0);
        }
        let creds_path = root.join("aws-credentials");
        std::fs::write(&creds_path, creds)?;

        let coord_addrs: Vec<String> = ids
            .iter()
            .map(|i| lab.host(&format!("coord-{i}")).addr(COORD_PORT))
            .collect();
        let mut coords = Vec::new();
        for &id in &ids {
            let host = lab.host(&format!("coord-{id}")).clone();
            let data = root.join(format!("coordinator-{id}"));
            let mut text = format!(
                "node_id = {id}\nlisten = \"{}\"\ndata_dir = \"{}\"\n",
                host.addr(COORD_PORT),
                data.display()
            );
            for (i, a) in ids.iter().zip(&coord_addrs) {
                text += &format!("[[initial_members]]\nid = {i}\naddress = \"{a}\"\n");
            }
            text += "[raft]\nsnapshot_every = 500\n[jobs]\nlease_seconds = 10\n";
            text += &dir.tls_section("certs", &format!("peer-{id}"));
            let config = root.join(format!("coordinator-{id}.toml"));
            std::fs::write(&config, text)?;
            let mut proc = Proc::new(
                format!("coord-{id}"),
                Spec {
                    host: host.clone(),
                    program: bin("fleetsnap-coordinator"),
                    args: vec!["--config".into(), config.display().to_string()],
                    env: vec![
                        ("FLEETSNAP_LOG".into(), "info,openraft=warn".into()),
                        ("NO_COLOR".into(), "1".into()),
                    ],
                    log: root.join(format!("coordinator-{id}.log")),
                },
            );
            proc.start()?;
            coords.push(Coord { id, host, proc });
        }

        let mut nodes = Vec::new();
        for (i, agent_id) in agents.iter().enumerate() {
            let host = lab.host(&format!("node-{i}")).clone();
            let data = root.join(format!("redis-{i}"));
            std::fs::create_dir_all(&data)?;
            let mut redis = Proc::new(
                format!("redis node-{i}"),
                Spec::redis(
                    &host,
                    root.join(format!("redis-{i}.log")),
                    &[
                        "--dir",
                        &data.display().to_string(),
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "3000",
                        "--appendonly",
                        "no",
                        "--repl-diskless-sync",
                        "yes",
                        "--repl-diskless-sync-delay",
                        "0",
                    ],
                ),
            );
            redis.start()?;
            let agent_id = agent_id.clone();
            let spool = root.join(format!("spool-{i}"));
            std::fs::create_dir_all(&spool)?;
            let list: Vec<String> = coord_addrs.iter().map(|c| format!("\"{c}\"")).collect();
            let mut text = format!(
                "agent_id = \"{agent_id}\"\ncoordinators = [{}]\n",
                list.join(", ")
            );
            text += &dir.tls_section("certs", &format!("agent-{agent_id}"));
            text += &format!(
                "[[instance]]\nname = \"node-{i}\"\nurl = \"redis://{}\"\ncluster = \"{CLUSTER}\"\n",
                host.addr(REDIS_PORT)
            );
            text += &format!(
                "[snapshot]\nspool_dir = \"{}\"\nidle_timeout_seconds = 30\n",
                spool.display()
            );
            let config = root.join(format!("agent-{i}.toml"));
            std::fs::write(&config, text)?;
            let agent = Proc::new(
                format!("agent node-{i}"),
                Spec {
                    host: host.clone(),
                    program: bin("fleetsnap-agent"),
                    args: vec![
                        "run".into(),
                        "--config".into(),
                        config.display().to_string(),
                    ],
                    env: vec![
                        ("RUST_LOG".into(), "info".into()),
                        ("NO_COLOR".into(), "1".into()),
                        ("AWS_CONFIG_FILE".into(), "/dev/null".into()),
                        (
                            "AWS_SHARED_CREDENTIALS_FILE".into(),
                            creds_path.display().to_string(),
                        ),
                    ],
                    log: root.join(format!("agent-{i}.log")),
                },
            );
            nodes.push(Node {
                host,
                redis,
                agent,
                agent_id,
                spool,
            });
        }
        let cli = dir.cli(&coord_addrs);
        let mut fleet = Self {
            coords,
            nodes,
            regions,
            cli,
            creds: creds_path,
            dir,
            lab,
        };
        fleet.form_cluster().await?;
        fleet.prefill().await?;
        // Snapshots take seconds, not milliseconds, so faults land inside windows.
        for n in &fleet.nodes {
            command(&n.addr(), &["CONFIG", "SET", "rdb-key-save-delay", "500"]).await?;
        }
        for n in &mut fleet.nodes {
            n.agent.start()?;
        }
        fleet.wait_ready().await?;
        Ok(fleet)
    }

    /// `redis-cli --cluster create` over the six nodes, then waits for `cluster_state:ok`
    /// everywhere and every replica in sync.
    async fn form_cluster(&self) -> anyhow::Result<()> {
        for n in &self.nodes {
            poll_until(
                &format!("redis on {}", n.host.name),
                Duration::from_secs(20),
                || async { n.conn().await.ok() },
            )
            .await?;
        }
        let addrs: Vec<String> = self.nodes.iter().map(Node::addr).collect();
        let out = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        for n in &self.nodes {
            poll_until(
                &format!("cluster ok on {}", n.host.name),
                Duration::from_secs(30),
                || async {
                    let mut c = n.conn().await.ok()?;
                    let v = c.command(&[b"CLUSTER", b"INFO"]).await.ok()?;
                    let text = v.text()?;
                    text.contains("cluster_state:ok").then_some(())
                },
            )
            .await?;
        }
        Ok(())
    }

    /// `PREFILL` keys of 100 bytes per shard, written to its primary, so every snapshot has
    /// some weight.
    async fn prefill(&self) -> anyhow::Result<()> {
        let tags = crate::workload::tags();
        for (k, tag) in tags.iter().enumerate() {
            let primary = self.nodes[k].addr();
            for batch in 0..PREFILL / 1000 {
                let mut args = vec!["MSET".to_string()];
                for i in batch * 1000..(batch + 1) * 1000 {
                    args.push(format!("{{{tag}}}:fill:{i}"));
                    args.push("x".repeat(100));
                }
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                command(&primary, &args).await?;
            }
        }
        Ok(())
    }

    /// Waits until the coordinators have a leader and the fleet's status shows three shards,
    /// each with two nodes, the replica's link up and within 1 MiB of its primary (the writer
    /// may be running).
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let cli = &self.cli;
        poll_until(
            "three shards reported, each with its replica linked",
            Duration::from_secs(90),
            || async {
                let s = cli.json(&["status", "--json"]).ok()?;
                let shards = s["clusters"][0]["shards"].as_array()?.clone();
                (shards.len() == SHARDS
                    && shards.iter().all(|sh| {
                        sh["nodes"].as_array().is_some_and(|n| {
                            n.len() == 2
                                && n.iter().all(|n| {
                                    n["lag_bytes"].as_u64().unwrap_or(0) < 1 << 20
                                        && (n["link"].is_null() || n["link"] == "up")
                                })
                        })
                    }))
                .then_some(())
            },
        )
        .await
    }

    /// The leader's id, as the coordinators say.
    pub fn leader(&self) -> anyhow::Result<u64> {
        let s = self.cli.json(&["cluster", "status", "--json"])?;
        s["leader_id"]
            .as_u64()
            .with_context(|| format!("no leader in {s}"))
    }

    /// The CLI, asking every coordinator but `id`.
    pub fn cli_without(&self, id: u64) -> Cli {
        let others: Vec<String> = self
            .coords
            .iter()
            .filter(|c| c.id != id)
            .map(Coord::addr)
            .collect();
        self.cli.to(&others)
    }

    /// The coordinator with id `id`.
    pub fn coord(&mut self, id: u64) -> &mut Coord {
        self.coords
            .iter_mut()
            .find(|c| c.id == id)
            .expect("a coordinator of the fleet")
    }

    /// Sets a policy from TOML text.
    pub fn set_policy(&self, name: &str, toml: &str) -> anyhow::Result<()> {
        self.cli.set_policy(self.dir.path(), name, toml)
    }

    /// Sets the scenarios' usual policy: `sim`, `simultaneous`, complete in both regions.
    pub fn set_sim_policy(&self) -> anyhow::Result<()> {
        self.set_policy("sim", &self.policy("sim", "simultaneous", 2))
    }

    /// The policy text for `name` over both regions.
    pub fn policy(&self, name: &str, consistency: &str, min_regions: usize) -> String {
        let mut text = format!(
            "name = \"{name}\"\nclusters = [\"{CLUSTER}\"]\nconsistency = \"{consistency}\"\n\
             write_pause_budget_ms = 500\nmin_regions = {min_regions}\n"
        );
        for r in &self.regions {
            text += &format!(
                "\n[[destinations]]\nregion = \"{}\"\nurl = \"{}\"\n",
                r.name,
                r.dest()
            );
        }
        text + "\n[retention]\nkeep_last = 2\n"
    }

    /// Logs of every process, for a failure report.
    pub fn logs(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self
            .coords
            .iter()
            .map(|c| c.proc.spec.log.clone())
            .collect();
        for n in &self.nodes {
            v.push(n.agent.spec.log.clone());
            v.push(n.redis.spec.log.clone());
        }
        v
    }

    /// The fleet's working directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Starts Garage on `host`, lays out its one node, imports a key, makes bucket `fleet`, and puts
/// the proxy in front. Returns the region with its access key and secret.
async fn start_region(
    root: &Path,
    name: &str,
    host: Host,
    seed: u64,
) -> anyhow::Result<(Region, String, String)> {
    let d = root.join(format!("garage-{name}"));
    std::fs::create_dir_all(&d)?;
    let config = d.join("garage.toml");
    std::fs::write(
        &config,
        garage_config(&d, "127.0.0.1:3901", &host.addr(S3_PORT), "127.0.0.1:3903"),
    )?;
    let mut garage = Proc::new(
        format!("garage {name}"),
        Spec {
            host: host.clone(),
            program: garage_bin(),
            args: vec!["-c".into(), config.display().to_string(), "server".into()],
            env: vec![("RUST_LOG".into(), "warn".into())],
            log: d.join("garage.log"),
        },
    );
    garage.start()?;
    let upstream = host.addr(S3_PORT).parse()?;
    let proxy = Proxy::start(&host, PROXY_PORT, upstream, seed).await?;
    let region = Region {
        name: name.into(),
        host,
        garage,
        proxy,
        config,
    };
    let (access, secret_key) = garage_lay_out(|args| region.garage_cli(args)).await?;
    region.garage_cli(&["bucket", "create", "fleet"])?;
    region.garage_cli(&[
        "bucket", "allow", "--read", "--write", "--owner", "fleet", "--key", &access,
    ])?;
    Ok((region, access, secret_key))
}

/// Sends one command to `addr` (from the client host) and returns the reply.
pub async fn command(addr: &str, args: &[&str]) -> anyhow::Result<Value> {
    let t = RedisTarget::parse(&format!("redis://{addr}"))?;
    let mut c = Connection::connect(&t).await?;
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    Ok(c.command(&args).await?)
}
