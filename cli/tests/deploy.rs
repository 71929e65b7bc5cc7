//! The files under `deploy/` against the real binaries: every command line in the systemd
//! units, the Dockerfile, the compose file and the Kubernetes manifests is run as
//! `check-config` with the same arguments, on the config it would read there and with real
//! certificates, so neither the files nor the code can drift; the units pass `systemd-analyze
//! verify` and stay hardened; the alert rules pass `promtool check rules` and `promtool test
//! rules`; the example policy is a valid policy.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use fleetsnap_testkit::fleet::bin;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what}: {cmd:?} failed:\n{text}");
    text
}

/// A stand-in for a host's `/etc/fleetsnap`: certificates for every identity the deploy files
/// name, the Redis password files, and the configs put where the command lines read them.
struct Etc {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Etc {
    fn new() -> Etc {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("etc/fleetsnap");
        std::fs::create_dir_all(root.join("redis")).unwrap();
        run(
            Command::new(bin("fleetsnap")).args([
                "certs",
                "init",
                "--dir",
                root.join("tls").to_str().unwrap(),
                "--peers",
                "1,2,3",
                "--agents",
                "redis-host-a,redis-primary,redis-replica,redis-0,redis-1,redis-2",
            ]),
            "certs init",
        );
        std::fs::write(root.join("redis-password"), "secret\n").unwrap();
        std::fs::write(root.join("redis/password"), "secret\n").unwrap();
        Etc { _dir: dir, root }
    }

    /// `/etc/fleetsnap/…` in a file or argument, as here.
    fn map(&self, text: &str) -> String {
        text.replace("/etc/fleetsnap/", &format!("{}/", self.root.display()))
    }

    /// Puts a config where a command line reads it (`/etc/fleetsnap/NAME`).
    fn install(&self, name: &str, text: &str) {
        std::fs::write(self.root.join(name), self.map(text)).unwrap();
    }
}

/// Runs a deploy file's command line as `check-config` with the same arguments.
fn check_command(etc: &Etc, argv: &[String], hostname: Option<&str>, origin: &str) {
    let program = argv[0].rsplit('/').next().unwrap();
    let mut args: Vec<String> = argv[1..].iter().map(|a| etc.map(a)).collect();
    match program {
        "fleetsnap-coordinator" => {
            if args.first().map(String::as_str) != Some("check-config") {
                args.insert(0, "check-config".into());
            }
        }
        "fleetsnap-agent" => match args.first().map(String::as_str) {
            Some("run") => args[0] = "check-config".into(),
            Some("check-config") => {}
            other => panic!("{origin}: fleetsnap-agent {other:?}: neither run nor check-config"),
        },
        "fleetsnap" => {
            // `certs init` runs for real, into a directory of its own.
            let dir = tempfile::tempdir().unwrap();
            let args: Vec<String> = args
                .iter()
                .map(|a| {
                    a.replace(
                        &etc.root.join("tls").display().to_string(),
                        &dir.path().display().to_string(),
                    )
                })
                .collect();
            run(Command::new(bin("fleetsnap")).args(&args), origin);
            assert!(dir.path().join("ca.pem").exists(), "{origin}");
            return;
        }
        other => panic!("{origin}: unknown program {other}"),
    }
    let mut cmd = Command::new(bin(program));
    cmd.args(&args);
    if let Some(h) = hostname {
        cmd.env("HOSTNAME", h);
    }
    let text = run(&mut cmd, origin);
    assert!(text.contains("would start with it"), "{origin}: {text}");
}

/// A JSON-style flow sequence (`["a", "b"]`) after `key:` on a line, in YAML or a Dockerfile.
fn flow_list(line: &str, key: &str) -> Option<Vec<String>> {
    let rest = line.trim().strip_prefix(key)?.trim();
    rest.starts_with('[')
        .then(|| serde_json::from_str(rest).unwrap_or_else(|e| panic!("{line}: {e}")))
}

/// The services of a compose file: each name with its lines.
fn services_of(compose: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut inside = false;
    for l in compose.lines().filter(|l| !l.trim().is_empty()) {
        if !l.starts_with(' ') {
            inside = l == "services:";
            continue;
        }
        if !inside {
            continue;
        }
        match l.strip_prefix("  ").filter(|n| !n.starts_with(' ')) {
            Some(n) => out.push((n.trim_end_matches(':').to_string(), String::new())),
            None => {
                if let Some((_, text)) = out.last_mut() {
                    *text += l;
                    *text += "\n";
                }
            }
        }
    }
    out
}

/// The text of a YAML block scalar `key: |` (dedented).
fn block(yaml: &str, key: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != format!("{key}: |"));
    let head = lines.next().unwrap_or_else(|| panic!("no {key}: | block"));
    let indent = head.len() - head.trim_start().len();
    let mut out = String::new();
    for l in lines {
        let this = l.len() - l.trim_start().len();
        if !l.trim().is_empty() && this <= indent {
            break;
        }
        out += l.get(indent + 2..).unwrap_or("");
        out += "\n";
    }
    out
}

#[test]
fn every_command_line_and_config_in_deploy_is_one_the_binaries_accept() {
    let etc = Etc::new();
    let mut checked = BTreeSet::new();

    // systemd: the configs in deploy/config, as installed.
    etc.install("coordinator.toml", &read("deploy/config/coordinator.toml"));
    etc.install("agent.toml", &read("deploy/config/agent.toml"));
    checked.extend(["deploy/config/coordinator.toml", "deploy/config/agent.toml"]);
    for unit in ["fleetsnap-coordinator.service", "fleetsnap-agent.service"] {
        let text = read(&format!("deploy/systemd/{unit}"));
        let mut commands = 0;
        for line in text.lines() {
            if let Some(cmd) = line
                .strip_prefix("ExecStart=")
                .or_else(|| line.strip_prefix("ExecStartPre="))
            {
                let argv: Vec<String> = cmd.split_whitespace().map(str::to_string).collect();
                check_command(&etc, &argv, None, &format!("{unit}: {line}"));
                commands += 1;
            }
        }
        assert_eq!(commands, 2, "{unit}");
    }

    // The image's default command, and the compose fleet's services.
    etc.install(
        "coordinator.toml",
        &read("deploy/docker/config/coordinator.toml"),
    );
    let dockerfile = read("deploy/docker/Dockerfile");
    let entry = dockerfile
        .lines()
        .find_map(|l| flow_list(l, "ENTRYPOINT"))
        .unwrap();
    let cmd = dockerfile
        .lines()
        .find_map(|l| flow_list(l, "CMD"))
        .unwrap();
    check_command(
        &etc,
        &[entry, cmd].concat(),
        None,
        "Dockerfile ENTRYPOINT + CMD",
    );
    checked.insert("deploy/docker/config/coordinator.toml");
    let compose = read("deploy/docker/docker-compose.yml");
    let mut services = 0;
    for (name, service) in services_of(&compose)
        .into_iter()
        .filter(|(_, s)| s.contains("entrypoint:"))
    {
        let entry = service
            .lines()
            .find_map(|l| flow_list(l, "entrypoint:"))
            .unwrap();
        let command = service
            .lines()
            .find_map(|l| flow_list(l, "command:"))
            .unwrap();
        // Configs the service mounts: `- ./config/FILE:/etc/fleetsnap/NAME:ro`.
        for l in service.lines() {
            if let Some(mount) = l.trim().strip_prefix("- ./config/") {
                let (file, target) = mount.split_once(':').unwrap();
                let target = target.trim_end_matches(":ro");
                let name = target.strip_prefix("/etc/fleetsnap/").unwrap();
                let rel = format!("deploy/docker/config/{file}");
                etc.install(name, &read(&rel));
                checked.insert(Box::leak(rel.into_boxed_str()));
            }
        }
        check_command(
            &etc,
            &[entry, command].concat(),
            None,
            &format!("compose service {name}"),
        );
        services += 1;
    }
    assert_eq!(services, 4, "certs, coordinator and two agents");

    // Kubernetes: each pod's command with the ConfigMap's config, named as a pod is.
    for (file, key, pods) in [
        (
            "deploy/kubernetes/coordinator.yaml",
            "coordinator.toml",
            ["fleetsnap-coordinator-0", "fleetsnap-coordinator-2"],
        ),
        (
            "deploy/kubernetes/redis-with-agent.yaml",
            "agent.toml",
            ["redis-0", "redis-2"],
        ),
    ] {
        let yaml = read(file);
        etc.install(key, &block(&yaml, key));
        let lines: Vec<&str> = yaml.lines().collect();
        let mut found = 0;
        for (i, l) in lines.iter().enumerate() {
            let Some(command) = flow_list(l, "command:") else {
                continue;
            };
            if !command[0].starts_with("fleetsnap") {
                continue;
            }
            let args = flow_list(lines[i + 1], "args:").unwrap_or_default();
            for pod in pods {
                check_command(
                    &etc,
                    &[command.clone(), args.clone()].concat(),
                    Some(pod),
                    &format!("{file} as pod {pod}"),
                );
            }
            found += 1;
        }
        assert_eq!(found, 1, "{file}");
    }

    // Every config file under deploy/ was read by some command line.
    let mut all = BTreeSet::new();
    for dir in ["deploy/config", "deploy/docker/config"] {
        for e in std::fs::read_dir(repo().join(dir)).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".toml") && name != "policy.toml" {
                all.insert(format!("{dir}/{name}"));
            }
        }
    }
    let checked: BTreeSet<String> = checked.into_iter().map(str::to_string).collect();
    assert_eq!(checked, all, "config files no command line reads");

    // The example policy, as `fleetsnap policy set --file` reads it.
    let policy: fleetsnap_core::policy::Policy =
        toml::from_str(&read("deploy/config/policy.toml")).unwrap();
    policy.validate().unwrap();
}

#[test]
fn a_config_with_a_mistake_is_refused_by_check_config() {
    // The check above would pass on anything if check-config accepted anything.
    let etc = Etc::new();
    etc.install(
        "coordinator.toml",
        &read("deploy/config/coordinator.toml").replace("lease_seconds", "lease_secs"),
    );
    let out = Command::new(bin("fleetsnap-coordinator"))
        .args(["check-config", "--config"])
        .arg(etc.root.join("coordinator.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lease_secs"), "{err}");
    etc.install(
        "agent.toml",
        &read("deploy/config/agent.toml")
            .replace("agent-redis-host-a.pem", "agent-redis-host-b.pem"),
    );
    let out = Command::new(bin("fleetsnap-agent"))
        .args(["check-config", "--config"])
        .arg(etc.root.join("agent.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("agent-redis-host-b.pem"), "{err}");
}

#[test]
fn the_systemd_units_verify_and_stay_hardened() {
    for unit in ["fleetsnap-coordinator.service", "fleetsnap-agent.service"] {
        let text = read(&format!("deploy/systemd/{unit}"));
        for setting in [
            "User=fleetsnap",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "ProtectHome=yes",
            "PrivateTmp=yes",
        ] {
            assert!(text.lines().any(|l| l == setting), "{unit} lacks {setting}");
        }
        // The same unit with the binaries where this build put them.
        let dir = tempfile::tempdir().unwrap();
        let here = dir.path().join(unit);
        let target = bin("fleetsnap-agent");
        std::fs::write(
            &here,
            text.replace(
                "/usr/local/bin/",
                &format!("{}/", target.parent().unwrap().display()),
            ),
        )
        .unwrap();
        let out = run(
            Command::new("systemd-analyze").arg("verify").arg(&here),
            &format!("systemd-analyze verify {unit} (Debian package systemd)"),
        );
        assert!(!out.contains("Unknown"), "{unit}: {out}");
        let security = run(
            Command::new("systemd-analyze")
                .args(["security", "--offline=yes", "--no-pager"])
                .arg(&here),
            &format!("systemd-analyze security {unit}"),
        );
        let level: f64 = security
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{unit}: no exposure level in\n{security}"));
        assert!(level < 3.0, "{unit}: exposure {level}\n{security}");
    }
}

#[test]
fn the_alert_rules_pass_promtool() {
    let dir = repo().join("deploy/prometheus");
    run(
        Command::new("promtool")
            .current_dir(&dir)
            .args(["check", "rules", "alerts.yml"]),
        "promtool check rules (Debian package prometheus)",
    );
    run(
        Command::new("promtool")
            .current_dir(&dir)
            .args(["test", "rules", "alerts.test.yml"]),
        "promtool test rules",
    );
    run(
        Command::new("promtool")
            .current_dir(&dir)
            .args(["check", "config", "prometheus.yml"]),
        "promtool check config",
    );
}

#[test]
fn completions_and_man_pages_come_from_each_binarys_command_line() {
    for (binary, page, option) in [
        ("fleetsnap", "fleetsnap-backup-run.1", "--wait"),
        ("fleetsnap-agent", "fleetsnap-agent-restore.1", "--replace"),
        (
            "fleetsnap-coordinator",
            "fleetsnap-coordinator-check-config.1",
            "--node-id-from-hostname",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        run(
            Command::new(bin(binary)).arg("man").arg(dir.path()),
            &format!("{binary} man"),
        );
        let text = std::fs::read_to_string(dir.path().join(page))
            .unwrap_or_else(|e| panic!("{binary} man wrote no {page}: {e}"));
        assert!(
            text.contains(&option.replace('-', "\\-")),
            "{page} lacks {option}:\n{text}"
        );
        let script = dir.path().join("completion.bash");
        let out = run(
            Command::new(bin(binary)).args(["completions", "bash"]),
            &format!("{binary} completions bash"),
        );
        std::fs::write(&script, &out).unwrap();
        run(
            Command::new("bash").arg("-n").arg(&script),
            &format!("bash -n on {binary}'s completions"),
        );
        assert!(out.contains(option), "{binary}'s completions lack {option}");
    }
}
