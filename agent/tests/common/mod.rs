//! Helpers for tests that run the real `fleetsnap-agent` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use fleetsnap_testkit::redis::RedisOptions;
use fleetsnap_testkit::{Garage, Moto, RedisServer, credentials_file};

/// The result of one agent run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "agent failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs the agent with a credentials file for the S3 regions, bounded in time.
pub async fn agent(creds: Option<&Path>, args: &[&str]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleetsnap-agent"));
    cmd.args(args)
        .kill_on_drop(true)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE");
    cmd.env("AWS_CONFIG_FILE", "/dev/null");
    match creds {
        Some(c) => cmd.env("AWS_SHARED_CREDENTIALS_FILE", c),
        None => cmd.env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent-fleetsnap-aws-credentials",
        ),
    };
    let out: Output = tokio::time::timeout(Duration::from_secs(600), cmd.output())
        .await
        .expect("agent run within 10 minutes")
        .expect("agent starts");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Two S3 regions on two implementations, each with a bucket, and a credentials file.
pub struct Regions {
    pub garage: Garage,
    pub moto: Moto,
    pub creds: PathBuf,
    pub dir: tempfile::TempDir,
}

pub const BUCKET: &str = "fleetsnap-backups";

impl Regions {
    pub async fn start() -> Regions {
        let (garage, moto) = (
            Garage::start().await.expect("garage"),
            Moto::start().await.expect("moto"),
        );
        garage.create_bucket(BUCKET).await.unwrap();
        moto.region.create_bucket(BUCKET).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let creds = credentials_file(dir.path(), &[&garage.region, &moto.region]).unwrap();
        Regions {
            garage,
            moto,
            creds,
            dir,
        }
    }
    pub fn garage_dest(&self, prefix: &str) -> String {
        self.garage.region.dest(BUCKET, prefix)
    }
    pub fn moto_dest(&self, prefix: &str) -> String {
        self.moto.region.dest(BUCKET, prefix)
    }
}

/// Restores `backup` from `dests` to a file and starts a fresh server on it.
pub async fn restore_and_load(
    creds: Option<&Path>,
    dests: &[&str],
    backup: &str,
    dir: &Path,
    extra: &[&str],
) -> RedisServer {
    let file = dir.join(format!("restored-{}.rdb", rand_suffix()));
    let mut args = vec!["restore"];
    for d in dests {
        args.extend(["--from", d]);
    }
    let f = file.display().to_string();
    args.extend(["--backup", backup, "--to-file", &f]);
    args.extend(extra);
    agent(creds, &args).await.ok();
    RedisServer::start_with(RedisOptions {
        rdb: Some(file),
        ..Default::default()
    })
    .await
    .expect("restored RDB loads")
}

/// Snapshots the server at `url` to `dest`; gives the backup id.
pub async fn backed_up(url: &str, dest: &str) -> String {
    let out = agent(None, &["snapshot", "--redis", url, "--to", dest, "--json"])
        .await
        .ok()
        .json();
    out["backup_id"].as_str().expect("backup_id").to_string()
}

/// Restores backup `id` from `dest` to the RDB file `file` (and its tail beside it, if any).
pub async fn restored_to_file(dest: &str, id: &str, file: &Path) {
    agent(
        None,
        &[
            "restore",
            "--from",
            dest,
            "--backup",
            id,
            "--to-file",
            &file.display().to_string(),
        ],
    )
    .await
    .ok();
}

/// Flips one bit of the first file under `root` whose name ends with `suffix`, at `at` of its
/// length (0.5: the middle): its sha256 no longer matches the manifest.
pub fn flip_byte(root: &Path, suffix: &str, at: f64) {
    let name = files_under(root)
        .into_iter()
        .find(|f| f.ends_with(suffix))
        .unwrap_or_else(|| panic!("no file ending {suffix} under {}", root.display()));
    let path = root.join(name);
    let mut bytes = std::fs::read(&path).unwrap();
    let i = (bytes.len() as f64 * at) as usize;
    bytes[i] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
}

pub fn rand_suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// Every key under a directory, recursively, relative to it.
pub fn files_under(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                } else {
                    out.push(e.path().strip_prefix(root).unwrap().display().to_string());
                }
            }
        }
    }
    out
}

/// Snapshots with `args` (after `snapshot`; `--to DEST --json` are added) into `dest`, restores
/// the backup, loads it into a fresh server and asserts it equals `expected`. Returns the report.
pub async fn round_trip(
    expected: &RedisServer,
    work: &Path,
    dest: &str,
    args: &[&str],
) -> serde_json::Value {
    let mut full = vec!["snapshot"];
    full.extend_from_slice(args);
    full.extend(["--to", dest, "--json"]);
    let report = agent(None, &full).await.ok().json();
    let id = report["backup_id"].as_str().expect("backup_id").to_string();
    let restored = restore_and_load(None, &[dest], &id, work, &[]).await;
    fleetsnap_testkit::assert_same_data(expected, &restored)
        .await
        .unwrap();
    report
}

/// A server with a small dataset whose RDB child writes slowly (`rdb-key-save-delay`, microseconds
/// per key), so a fork stays observable for a while.
pub async fn slow_rdb_server(small_keys: usize, delay_micros: u32) -> RedisServer {
    let server = RedisServer::start().await.unwrap();
    let data = fleetsnap_testkit::Dataset {
        small_keys,
        big_value_bytes: 1 << 20,
    };
    fleetsnap_testkit::write_dataset(&server, &data)
        .await
        .unwrap();
    server
        .cmd(&[
            "CONFIG",
            "SET",
            "rdb-key-save-delay",
            &delay_micros.to_string(),
        ])
        .await
        .unwrap();
    server
}

/// Waits until an RDB child (a BGSAVE or a sync to a replica) runs on the server.
pub async fn wait_for_rdb_child(server: &RedisServer) {
    fleetsnap_testkit::poll_until(
        "an RDB child on the node",
        Duration::from_secs(30),
        || async {
            (server
                .info("persistence", "rdb_bgsave_in_progress")
                .await
                .ok()??
                == "1")
                .then_some(())
        },
    )
    .await
    .unwrap();
}
