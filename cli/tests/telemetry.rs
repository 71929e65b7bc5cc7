//! What operators watch: one trace per window across the coordinator and every agent that
//! worked on it, exported over OTLP to a receiver the test runs; `/metrics`, `/healthz` and
//! `/readyz` on every process; JSON log lines that carry the trace id; and the Grafana
//! dashboard's and the alert rules' queries, every one of which must use a metric the running
//! processes export.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use fleetsnap_telemetry::http::get;
use fleetsnap_testkit::fleet::{Agent, Cli, Coordinator, FleetDir, Logs, Watched};
use fleetsnap_testkit::otlp::{OtlpReceiver, ReceivedSpan};
use fleetsnap_testkit::redis::{RedisOptions, ReplicaSet};
use fleetsnap_testkit::{free_port, poll_until};

/// Two clusters of a primary and a replica, an agent beside each node, one coordinator; every
/// process exports spans to `otlp` and serves `/metrics`.
struct Fleet {
    fleet: FleetDir,
    coordinator: Coordinator,
    agents: Vec<Agent>,
    cli: Cli,
    /// `(who, address)` of every process's metrics endpoint.
    endpoints: Vec<(String, SocketAddr)>,
    otlp: OtlpReceiver,
    _sets: Vec<ReplicaSet>,
}

impl Fleet {
    async fn start() -> Fleet {
        let otlp = OtlpReceiver::start().await.unwrap();
        let ids = ["a1", "a2", "a3", "a4"];
        let fleet = FleetDir::new(&[1], &ids).unwrap();
        let telemetry = |port: u16| {
            format!(
                "[telemetry]\notlp_endpoint = \"{}\"\nmetrics_listen = \"127.0.0.1:{port}\"\n",
                otlp.endpoint()
            )
        };
        let mut endpoints = Vec::new();
        let mut coordinator =
            Coordinator::configure(&fleet, 1, &Coordinator::addresses(1), &Default::default())
                .unwrap();
        let port = free_port();
        coordinator.add_config(&telemetry(port)).unwrap();
        endpoints.push(("coordinator-1".to_string(), ([127, 0, 0, 1], port).into()));
        coordinator.start().await.unwrap();
        let cli = fleet.cli(std::slice::from_ref(&coordinator.address));
        poll_until("coordinator 1 leads", Duration::from_secs(10), || async {
            cli.json(&["cluster", "status", "--json"]).ok()
        })
        .await
        .unwrap();

        let shop = ReplicaSet::start(1, RedisOptions::default()).await.unwrap();
        let cart = ReplicaSet::start(1, RedisOptions::default()).await.unwrap();
        for (set, name) in [(&shop, "shop"), (&cart, "cart")] {
            for i in 0..500 {
                set.primary
                    .cmd(&["SET", &format!("{name}:{i}"), "v"])
                    .await
                    .unwrap();
            }
            set.wait_synced().await.unwrap();
        }
        let nodes = [
            (
                "a1",
                Watched::new("shop-primary", shop.primary.url(), "shop"),
            ),
            (
                "a2",
                Watched::new("shop-replica", shop.replicas[0].url(), "shop"),
            ),
            (
                "a3",
                Watched::new("cart-primary", cart.primary.url(), "cart"),
            ),
            (
                "a4",
                Watched::new("cart-replica", cart.replicas[0].url(), "cart"),
            ),
        ];
        let mut agents = Vec::new();
        for (id, watched) in nodes {
            let coords = [coordinator.address.clone()];
            let mut a = Agent::configure(&fleet, id, &coords, &[watched], false).unwrap();
            let port = free_port();
            a.add_config(&telemetry(port)).unwrap();
            endpoints.push((id.to_string(), ([127, 0, 0, 1], port).into()));
            if id == "a2" {
                a.env("FLEETSNAP_LOG_FORMAT", "json");
                // It took shop's snapshots, so it runs shop's drills.
                let drills = fleet.path().join("drills");
                a.add_config(&format!("[drill]\nwork_dir = \"{}\"\n", drills.display()))
                    .unwrap();
            }
            a.start().unwrap();
            agents.push(a);
        }
        let regions = fleet.path().join("regions");
        let policy = format!(
            r#"
name = "both"
clusters = ["shop", "cart"]
min_regions = 2
rpo_seconds = 3600

[[destinations]]
region = "near"
url = "file://{near}"

[[destinations]]
region = "far"
url = "file://{far}"
"#,
            near = regions.join("near").display(),
            far = regions.join("far").display()
        );
        cli.set_policy(fleet.path(), "both", &policy).unwrap();
        poll_until(
            "both clusters reported, two nodes each",
            Duration::from_secs(30),
            || async {
                let s = cli.json(&["status", "--json"]).ok()?;
                let clusters = s["clusters"].as_array()?.clone();
                (clusters.len() == 2
                    && clusters.iter().all(|c| {
                        c["shards"][0]["nodes"]
                            .as_array()
                            .is_some_and(|n| n.len() == 2)
                    }))
                .then_some(())
            },
        )
        .await
        .unwrap();
        Fleet {
            fleet,
            coordinator,
            agents,
            cli,
            endpoints,
            otlp,
            _sets: vec![shop, cart],
        }
    }

    fn logs(&self) -> Logs {
        Logs::of(std::slice::from_ref(&self.coordinator), &self.agents)
    }

    /// A window of the policy, complete: its document.
    fn window(&self) -> serde_json::Value {
        let (ok, doc) = self.cli.backup_run("both").unwrap();
        assert!(ok, "the window did not complete: {doc}");
        doc
    }
}

/// The spans of one trace, once the coordinator's root and a span from each of `agents` are in.
async fn trace(
    otlp: &OtlpReceiver,
    trace_id: &str,
    agents: &BTreeSet<String>,
) -> Vec<ReceivedSpan> {
    poll_until(
        &format!("trace {trace_id}: the window span and a span from each of {agents:?}"),
        Duration::from_secs(40),
        || async {
            let spans: Vec<ReceivedSpan> = otlp
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .collect();
            let root = spans
                .iter()
                .any(|s| s.service == "fleetsnap-coordinator" && s.name == "window");
            let from: BTreeSet<String> = spans
                .iter()
                .filter(|s| s.service == "fleetsnap-agent")
                .map(|s| s.instance.clone())
                .collect();
            (root && agents.is_subset(&from)).then_some(spans)
        },
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn windows_and_drills_are_each_one_trace_from_the_coordinator_through_the_agents_they_used() {
    let f = Fleet::start().await;
    let _logs = f.logs();
    let first = f.window();
    let second = f.window();

    let mut trace_ids = BTreeSet::new();
    for doc in [&first, &second] {
        let trace_id = doc["trace_id"]
            .as_str()
            .expect("the window names its trace");
        assert!(
            trace_ids.insert(trace_id.to_string()),
            "two windows share trace {trace_id}"
        );
        let involved: BTreeSet<String> = doc["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["agent"].as_str().unwrap().to_string())
            .collect();
        // Snapshots from both replicas, and the manifests.
        assert!(involved.contains("a2") && involved.contains("a4"), "{doc}");
        let spans = trace(&f.otlp, trace_id, &involved).await;

        let roots: Vec<&ReceivedSpan> = spans
            .iter()
            .filter(|s| s.parent_span_id.is_empty())
            .collect();
        assert_eq!(roots.len(), 1, "one root in {spans:#?}");
        let root = roots[0];
        assert_eq!(
            (
                root.service.as_str(),
                root.instance.as_str(),
                root.name.as_str()
            ),
            ("fleetsnap-coordinator", "1", "window")
        );
        assert_eq!(
            root.attributes.get("policy").map(String::as_str),
            Some("both")
        );
        assert_eq!(
            root.attributes.get("backup_id").map(String::as_str),
            doc["backup_id"].as_str()
        );
        let ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
        for s in &spans {
            assert!(
                s.parent_span_id.is_empty() || ids.contains(s.parent_span_id.as_str()),
                "span {} of {} has a parent outside the trace: {s:?}",
                s.name,
                s.service
            );
        }
        // Every job the window handed out is a child of the window, on the agent that ran it.
        let mut jobs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for s in spans.iter().filter(|s| s.name == "job") {
            assert_eq!(s.service, "fleetsnap-agent");
            assert_eq!(s.parent_span_id, root.span_id, "{s:?}");
            jobs.entry(s.instance.clone())
                .or_default()
                .insert(s.attributes.get("kind").cloned().unwrap_or_default());
        }
        assert_eq!(jobs.keys().cloned().collect::<BTreeSet<_>>(), involved);
        for replica in ["a2", "a4"] {
            assert!(jobs[replica].contains("snapshot"), "{jobs:?}");
        }
        assert!(
            jobs.values().any(|kinds| kinds.contains("manifest")),
            "{jobs:?}"
        );
    }

    // A drill is a trace of its own: the coordinator's `drill` span, and the job of the agent
    // that loaded the set into a scratch server as its child. Its outcome reaches the metrics.
    let out = f
        .cli
        .run(&["drill", "run", "--cluster", "shop", "--wait", "120"])
        .unwrap();
    assert!(
        out.status.success(),
        "drill: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (drill, job) = poll_until(
        "the drill's spans from the coordinator and from a2",
        Duration::from_secs(40),
        || async {
            let spans = f.otlp.spans();
            let drill = spans
                .iter()
                .find(|s| s.service == "fleetsnap-coordinator" && s.name == "drill")?
                .clone();
            let job = spans
                .iter()
                .find(|s| {
                    s.trace_id == drill.trace_id
                        && s.name == "job"
                        && s.attributes.get("kind").map(String::as_str) == Some("drill")
                })?
                .clone();
            Some((drill, job))
        },
    )
    .await
    .unwrap();
    assert!(drill.parent_span_id.is_empty(), "{drill:?}");
    assert!(!trace_ids.contains(&drill.trace_id));
    assert_eq!(
        (job.instance.as_str(), job.parent_span_id.as_str()),
        ("a2", drill.span_id.as_str())
    );
    let (_, metrics) = get(f.endpoints[0].1, "/metrics").await.unwrap();
    assert_eq!(
        samples(
            &metrics,
            "fleetsnap_restore_last_ok",
            &[("cluster", "shop"), ("kind", "drill")]
        ),
        vec![1.0],
        "{metrics}"
    );
    let rto = samples(
        &metrics,
        "fleetsnap_restore_rto_seconds",
        &[("cluster", "shop"), ("kind", "drill")],
    );
    assert!(rto.len() == 1 && rto[0] > 0.0, "{rto:?}");

    // a2 logs JSON; its job lines carry the window's trace id.
    let log = f.agents[1].log_text();
    let carried: BTreeSet<String> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "running a job")
        .filter(|v| v["spans"][0]["kind"] != "drill")
        .filter_map(|v| {
            v["spans"]
                .as_array()?
                .iter()
                .find_map(|s| s["trace_id"].as_str().map(str::to_string))
        })
        .collect();
    assert_eq!(carried, trace_ids, "a2's JSON log:\n{log}");
}

/// Samples of `name` in a scrape whose labels include every one of `labels`.
fn samples(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse().ok())?
        })
        .collect()
}

/// The metric names a PromQL expression reads.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("fleetsnap_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// Every `expr` in the dashboard JSON.
fn dashboard_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

#[tokio::test]
async fn every_process_serves_metrics_and_probes_and_the_dashboard_and_alerts_use_only_them() {
    let f = Fleet::start().await;
    let _logs = f.logs();
    let doc = f.window();
    let opened = doc["opened_at_ms"].as_i64().unwrap() as f64 / 1000.0;

    let mut scrapes = BTreeMap::new();
    for (who, address) in &f.endpoints {
        assert_eq!(
            get(*address, "/healthz").await.unwrap().0,
            200,
            "{who} /healthz"
        );
        let (status, body) = get(*address, "/readyz").await.unwrap();
        assert_eq!(status, 200, "{who} /readyz: {body}");
        let (status, text) = get(*address, "/metrics").await.unwrap();
        assert_eq!(status, 200, "{who} /metrics");
        scrapes.insert(who.clone(), text);
    }
    // An archiver of one of the fleet's replicas, with its own endpoint.
    let work = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let mut archiver =
        tokio::process::Command::new(fleetsnap_testkit::fleet::bin("fleetsnap-agent"))
            .args([
                "archive",
                "run",
                "--shard",
                "shop-0",
                "--cluster",
                "shop",
                "--redis",
            ])
            .arg(f._sets[0].replicas[0].url())
            .arg("--to")
            .arg(format!("file://{}", work.path().join("region").display()))
            .arg("--spool-dir")
            .arg(work.path().join("spool"))
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{metrics_port}"))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
    let address: SocketAddr = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    let archive_text = poll_until("the archiver's stream", Duration::from_secs(60), || async {
        let (status, _) = get(address, "/readyz").await.ok()?;
        if status != 200 {
            return None;
        }
        get(address, "/metrics").await.ok().map(|(_, t)| t)
    })
    .await
    .unwrap();
    let lag = samples(
        &archive_text,
        "fleetsnap_archive_lag_seconds",
        &[("shard", "shop-0")],
    );
    assert!(
        lag.len() == 1 && lag[0] < 5.0,
        "a caught-up archiver's lag: {archive_text}"
    );
    assert_eq!(
        samples(
            &archive_text,
            "fleetsnap_archive_connected",
            &[("cluster", "shop")]
        ),
        vec![1.0]
    );
    archiver.kill().await.unwrap();
    scrapes.insert("archiver".to_string(), archive_text);
    let coordinator = &scrapes["coordinator-1"];
    for cluster in ["shop", "cart"] {
        let last = samples(
            coordinator,
            "fleetsnap_backup_last_success_timestamp_seconds",
            &[("cluster", cluster), ("policy", "both")],
        );
        assert_eq!(last.len(), 1, "{coordinator}");
        assert!((last[0] - opened).abs() < 1.0, "{last:?} vs {opened}");
        let age = samples(
            coordinator,
            "fleetsnap_backup_age_seconds",
            &[("cluster", cluster)],
        );
        assert!(age.len() == 1 && age[0] < 120.0, "{age:?}");
        for region in ["near", "far"] {
            assert_eq!(
                samples(
                    coordinator,
                    "fleetsnap_backup_region_complete",
                    &[("cluster", cluster), ("region", region)]
                ),
                vec![1.0]
            );
        }
        assert_eq!(
            samples(
                coordinator,
                "fleetsnap_shard_source_candidates",
                &[("cluster", cluster)]
            ),
            vec![2.0],
            "a replica and the primary as fallback"
        );
    }
    assert_eq!(
        samples(
            coordinator,
            "fleetsnap_policy_rpo_seconds",
            &[("policy", "both")]
        ),
        vec![3600.0]
    );
    assert_eq!(
        samples(coordinator, "fleetsnap_raft_is_leader", &[]),
        vec![1.0]
    );
    for agent in ["a1", "a2", "a3", "a4"] {
        assert_eq!(
            samples(
                coordinator,
                "fleetsnap_agent_connected",
                &[("agent", agent)]
            ),
            vec![1.0],
            "{agent}"
        );
        assert_eq!(
            samples(
                &scrapes[agent],
                "fleetsnap_agent_coordinator_connected",
                &[]
            ),
            vec![1.0],
            "{agent}"
        );
    }
    for (agent, cluster) in [("a2", "shop"), ("a4", "cart")] {
        let jobs = samples(
            &scrapes[agent],
            "fleetsnap_agent_jobs_total",
            &[("kind", "snapshot"), ("outcome", "succeeded")],
        );
        assert_eq!(jobs, vec![1.0], "{agent}");
        for region in ["near", "far"] {
            let bytes = samples(
                &scrapes[agent],
                "fleetsnap_agent_uploaded_bytes_total",
                &[("cluster", cluster), ("region", region)],
            );
            assert!(
                bytes.len() == 1 && bytes[0] > 0.0,
                "{agent} {region}: {bytes:?} in\n{}",
                scrapes[agent]
            );
        }
    }

    // Every metric a dashboard panel or an alert reads is one these processes export.
    let exported: BTreeSet<String> = scrapes
        .values()
        .flat_map(|t| t.lines())
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/fleetsnap.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    assert!(
        exprs.len() >= 10,
        "the dashboard has {} queries",
        exprs.len()
    );
    let alerts = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).unwrap();
    let alert_exprs: Vec<String> = alerts
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .map(|e| e.trim().to_string())
        .collect();
    assert!(alert_exprs.len() >= 6, "{alerts}");
    for expr in exprs.iter().chain(&alert_exprs) {
        let names = metric_names(expr);
        assert!(
            !names.is_empty(),
            "query {expr:?} reads no fleetsnap metric"
        );
        for name in names {
            assert!(
                exported.contains(&name),
                "query {expr:?} reads {name}, which no process exports; exported: {exported:?}"
            );
        }
    }
    // And promtool parses every dashboard query.
    let rules: String = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            format!(
                "      - record: dashboard:query_{i}\n        expr: {}\n",
                serde_json::to_string(e).unwrap()
            )
        })
        .collect();
    let file = f.fleet.path().join("dashboard-rules.yml");
    std::fs::write(
        &file,
        format!("groups:\n  - name: dashboard\n    rules:\n{rules}"),
    )
    .unwrap();
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool (Debian package prometheus; scripts/setup.sh test installs it)");
    assert!(
        out.status.success(),
        "promtool refused a dashboard query:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
