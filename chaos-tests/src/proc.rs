//! Processes on the lab's hosts: started inside a host's namespace, logged to a file, and killed
//! with the harness (`PR_SET_PDEATHSIG`, and on drop). Each keeps what started it, so a fault can
//! kill it and a later step start it again the same way.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Stdio};

use anyhow::Context;

use crate::net::Host;

/// How to start a process.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The host it runs on.
    pub host: Host,
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Where stdout and stderr go (appended).
    pub log: PathBuf,
}

/// A process on a host; see the module documentation.
pub struct Proc {
    /// A name for reports (`coord-2`, `agent redis-a1`).
    pub name: String,
    /// What starts it.
    pub spec: Spec,
    child: Option<Child>,
}

impl Spec {
    /// A `redis-server` on `host`'s address at [`REDIS_PORT`](crate::layout::REDIS_PORT),
    /// saving nothing and open to the lab's hosts, with `extra` arguments.
    pub fn redis(host: &Host, log: PathBuf, extra: &[&str]) -> Spec {
        let port = crate::layout::REDIS_PORT.to_string();
        let common = [
            "--bind",
            &host.ip,
            "--port",
            &port,
            "--save",
            "",
            "--protected-mode",
            "no",
        ];
        Spec {
            host: host.clone(),
            program: "redis-server".into(),
            args: common.iter().chain(extra).map(|a| a.to_string()).collect(),
            env: Vec::new(),
            log,
        }
    }
}

impl Proc {
    /// A process not yet started.
    pub fn new(name: impl Into<String>, spec: Spec) -> Self {
        Self {
            name: name.into(),
            spec,
            child: None,
        }
    }

    /// Starts it (again).
    pub fn start(&mut self) -> anyhow::Result<()> {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.spec.log)
            .with_context(|| format!("log {}", self.spec.log.display()))?;
        let mut cmd = self.spec.host.command(&self.spec.program);
        cmd.args(&self.spec.args)
            .envs(self.spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("start {} on {}", self.name, self.spec.host.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// Whether it runs (started and not exited).
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Its pid while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// SIGKILL, and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A paused process dies on SIGKILL as well.
            c.kill().ok();
            c.wait().ok();
        }
    }

    /// SIGSTOP: the process keeps its sockets but does nothing.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on a child of this process that has not been reaped.
            unsafe { libc::kill(pid, sig) };
        }
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.spec.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
