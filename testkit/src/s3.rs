//! Real S3-compatible regions: Garage (a Rust object store) and moto's S3 server.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use tempfile::TempDir;

use crate::{Process, free_port, poll_until};

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    (0..n)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// An S3 endpoint the tests can use.
#[derive(Clone, Debug)]
pub struct S3Region {
    /// Profile name in the credentials file (`garage`, `moto`).
    pub profile: String,
    /// Endpoint URL.
    pub endpoint: String,
    /// Signing region.
    pub region: String,
    /// Access key id.
    pub access_key: String,
    /// Secret key.
    pub secret_key: String,
}

impl S3Region {
    /// A client with this region's credentials.
    pub fn client(&self) -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .credentials_provider(Credentials::new(
                &self.access_key,
                &self.secret_key,
                None,
                None,
                "testkit",
            ))
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// The destination URL for a bucket and prefix, naming this region's profile.
    pub fn dest(&self, bucket: &str, prefix: &str) -> String {
        format!(
            "s3://{bucket}/{prefix}?region={}&endpoint={}&profile={}",
            self.region, self.endpoint, self.profile
        )
    }

    /// Creates a bucket.
    pub async fn create_bucket(&self, name: &str) -> anyhow::Result<()> {
        self.client()
            .create_bucket()
            .bucket(name)
            .send()
            .await
            .with_context(|| format!("create bucket {name} at {}", self.endpoint))?;
        Ok(())
    }

    /// Creates a bucket with S3 Object Lock enabled (and so versioning).
    pub async fn create_locked_bucket(&self, name: &str) -> anyhow::Result<()> {
        self.client()
            .create_bucket()
            .bucket(name)
            .object_lock_enabled_for_bucket(true)
            .send()
            .await
            .with_context(|| format!("create locked bucket {name} at {}", self.endpoint))?;
        Ok(())
    }

    /// Every key in a bucket.
    pub async fn keys(&self, bucket: &str) -> anyhow::Result<Vec<String>> {
        let out = self
            .client()
            .list_objects_v2()
            .bucket(bucket)
            .send()
            .await?;
        Ok(out
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect())
    }

    /// Multipart uploads still open in a bucket (left by failed uploads).
    pub async fn open_uploads(&self, bucket: &str) -> anyhow::Result<usize> {
        let out = self
            .client()
            .list_multipart_uploads()
            .bucket(bucket)
            .send()
            .await?;
        Ok(out.uploads().len())
    }
}

/// Writes an AWS credentials file with one profile per region; point AWS_SHARED_CREDENTIALS_FILE at it.
pub fn credentials_file(dir: &Path, regions: &[&S3Region]) -> anyhow::Result<PathBuf> {
    let mut text = String::new();
    for r in regions {
        text.push_str(&format!(
            "[{}]\naws_access_key_id = {}\naws_secret_access_key = {}\n\n",
            r.profile, r.access_key, r.secret_key
        ));
    }
    let path = dir.join("aws-credentials");
    std::fs::write(&path, text)?;
    Ok(path)
}

async fn wait_s3(region: &S3Region, what: &str) -> anyhow::Result<()> {
    let client = region.client();
    poll_until(what, Duration::from_secs(60), || {
        let client = client.clone();
        async move { client.list_buckets().send().await.ok().map(drop) }
    })
    .await
}

/// A single-node Garage cluster.
pub struct Garage {
    process: Process,
    /// Held so the data is removed when the Garage is dropped.
    _dir: TempDir,
    config: PathBuf,
    /// The S3 endpoint with an admin key for every bucket.
    pub region: S3Region,
}

/// The Garage binary: `GARAGE_BIN`, else `garage` on the PATH or in ~/.cargo/bin.
pub fn garage_bin() -> PathBuf {
    if let Ok(p) = std::env::var("GARAGE_BIN") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let cargo = Path::new(&home).join(".cargo/bin/garage");
    if cargo.exists() {
        cargo
    } else {
        PathBuf::from("garage")
    }
}

/// A single-node Garage's config: data under `dir`, RPC, S3 and admin APIs at the addresses given.
pub fn garage_config(dir: &Path, rpc: &str, s3: &str, admin: &str) -> String {
    let secret = random_hex(32);
    format!(
        "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"lmdb\"\nreplication_factor = 1\n\
         rpc_bind_addr = \"{rpc}\"\nrpc_public_addr = \"{rpc}\"\nrpc_secret = \"{secret}\"\n\n\
         [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"{s3}\"\nroot_domain = \".s3.garage.localhost\"\n\n\
         [admin]\napi_bind_addr = \"{admin}\"\nadmin_token = \"{secret}\"\n",
        d = dir.display()
    )
}

/// Once a single-node Garage's daemon answers through `cli` (the `garage` CLI with its config):
/// lays out its one node and imports a key that may create buckets. Returns the key's id and
/// secret.
pub async fn garage_lay_out(
    cli: impl Fn(&[&str]) -> anyhow::Result<String>,
) -> anyhow::Result<(String, String)> {
    // `node id` reads the key from disk; `status` needs the daemon up.
    poll_until("garage daemon", Duration::from_secs(60), || async {
        cli(&["status"]).ok()
    })
    .await?;
    let node = cli(&["node", "id", "-q"])?;
    let node = node
        .trim()
        .split('@')
        .next()
        .unwrap_or_default()
        .to_string();
    cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node])?;
    cli(&["layout", "apply", "--version", "1"])?;
    let access_key = format!("GK{}", random_hex(12));
    let secret_key = random_hex(32);
    cli(&[
        "key",
        "import",
        "--yes",
        "-n",
        "fleetsnap",
        &access_key,
        &secret_key,
    ])?;
    cli(&["key", "allow", "--create-bucket", &access_key])?;
    Ok((access_key, secret_key))
}

impl Garage {
    /// Starts Garage, lays out its one node, and imports a key that may create buckets.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("fleetsnap-garage-")
            .tempdir()?;
        let (rpc, s3, admin) = (free_port(), free_port(), free_port());
        let config = dir.path().join("garage.toml");
        std::fs::write(
            &config,
            garage_config(
                dir.path(),
                &format!("127.0.0.1:{rpc}"),
                &format!("127.0.0.1:{s3}"),
                &format!("127.0.0.1:{admin}"),
            ),
        )?;
        let mut cmd = Command::new(garage_bin());
        cmd.arg("-c")
            .arg(&config)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("garage.log"))?);
        let process = Process::spawn(
            &mut cmd,
            "start garage (install it: cargo install garage --locked)",
        )?;
        let mut g = Self {
            process,
            region: S3Region {
                profile: "garage".into(),
                endpoint: format!("http://127.0.0.1:{s3}"),
                region: "garage".into(),
                access_key: String::new(),
                secret_key: String::new(),
            },
            config,
            _dir: dir,
        };
        (g.region.access_key, g.region.secret_key) = garage_lay_out(|args| g.cli(args)).await?;
        wait_s3(&g.region, "garage S3 API").await?;
        Ok(g)
    }

    /// Runs the garage CLI against this node.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(garage_bin())
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()?;
        if !out.status.success() {
            bail!(
                "garage {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates a bucket under a global name, owned by the main key. (A bucket created through
    /// the S3 API is only an alias local to the key that made it.)
    pub async fn create_bucket(&self, name: &str) -> anyhow::Result<()> {
        self.cli(&["bucket", "create", name])?;
        self.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            name,
            "--key",
            &self.region.access_key,
        ])?;
        Ok(())
    }

    /// Creates a second key that may only read `bucket`.
    pub fn key_read_only(&self, bucket: &str) -> anyhow::Result<S3Region> {
        let access_key = format!("GK{}", random_hex(12));
        let secret_key: String = random_hex(32);
        self.cli(&[
            "key",
            "import",
            "--yes",
            "-n",
            "readonly",
            &access_key,
            &secret_key,
        ])?;
        self.cli(&["bucket", "allow", "--read", bucket, "--key", &access_key])?;
        Ok(S3Region {
            profile: "garage-readonly".into(),
            access_key,
            secret_key,
            ..self.region.clone()
        })
    }

    /// Stops Garage (the region goes down).
    pub fn kill(&mut self) {
        self.process.kill();
    }
}

/// moto's S3 server.
pub struct Moto {
    process: Process,
    /// The endpoint.
    pub region: S3Region,
}

impl Moto {
    /// Starts `moto_server` on a free port.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on(free_port()).await
    }

    /// Starts `moto_server` on `port` (a region coming back, empty, where it was).
    pub async fn start_on(port: u16) -> anyhow::Result<Self> {
        let mut cmd = Command::new("moto_server");
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let process = Process::spawn(
            &mut cmd,
            "start moto_server (install it: pip install 'moto[server]')",
        )?;
        let m = Self {
            process,
            region: S3Region {
                profile: "moto".into(),
                endpoint: format!("http://127.0.0.1:{port}"),
                region: "us-east-1".into(),
                access_key: "moto-key".into(),
                secret_key: "moto-secret".into(),
            },
        };
        wait_s3(&m.region, "moto S3 server").await?;
        Ok(m)
    }

    /// Stops the server (the region goes down).
    pub fn kill(&mut self) {
        self.process.kill();
    }
}
