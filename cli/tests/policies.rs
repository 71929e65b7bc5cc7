//! Policies through a real coordinator: from its config file, from `fleetsnap policy set`, kept
//! across a restart, and refused with a reason when wrong.

use std::io::Write;

use fleetsnap_testkit::fleet::{Coordinator, CoordinatorOptions, FleetDir, Logs, single_node};
use fleetsnap_testkit::poll_until;

const FROM_CONFIG: &str = r#"
[[policy]]
name = "nightly"
clusters = ["orders", "carts"]
schedule = "30 2 * * *"
consistency = "consistent"
write_pause_budget_ms = 20
min_regions = 2
preferred_zones = ["z1"]

[[policy.destinations]]
region = "dc1"
url = "file:///var/backups/dc1"

[[policy.destinations]]
region = "dc2"
url = "s3://backups/fleet?region=eu-west-1&endpoint=http://127.0.0.1:3900"
credentials = "dc2"

[policy.retention]
keep_last = 3
keep_daily = 7
"#;

const HOURLY: &str = r#"
name = "hourly"
clusters = ["sessions"]
schedule = "every 1h"
consistency = "simultaneous"

[[destinations]]
region = "local"
url = "file:///var/backups/local"

[retention]
keep_hourly = 24
"#;

#[tokio::test]
async fn policies_come_from_the_config_and_the_cli_and_survive_a_restart() {
    let fleet = FleetDir::new(&[1], &[]).unwrap();
    let mut one =
        Coordinator::configure(&fleet, 1, &Coordinator::addresses(1), &Default::default()).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&one.config)
        .unwrap()
        .write_all(FROM_CONFIG.as_bytes())
        .unwrap();
    let _logs = Logs(vec![one.log.clone()]);
    one.start().await.unwrap();
    let cli = fleet.cli(std::slice::from_ref(&one.address));

    // The leader writes the config's policy.
    let nightly = poll_until(
        "the config's policy",
        std::time::Duration::from_secs(15),
        || async { cli.json(&["policy", "get", "nightly", "--json"]).ok() },
    )
    .await
    .unwrap();
    assert_eq!(nightly["clusters"], serde_json::json!(["orders", "carts"]));
    assert_eq!(nightly["consistency"], "consistent");
    assert_eq!(nightly["write_pause_budget_ms"], 20);
    assert_eq!(nightly["destinations"][1]["credentials"], "dc2");
    assert_eq!(nightly["retention"]["keep_daily"], 7);

    // One more from a file.
    let file = fleet.path().join("hourly.toml");
    std::fs::write(&file, HOURLY).unwrap();
    let o = cli
        .run(&["policy", "set", "--file", file.to_str().unwrap()])
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let list = cli.run(&["policy", "list"]).unwrap();
    let table = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(table.contains("hourly"), "{table}");
    assert!(
        table.contains(
            "nightly          orders,carts         30 2 * * *     consistent   dc1,dc2 (2)"
        ),
        "{table}"
    );
    assert!(table.contains("24h"), "{table}");

    // Kept across a restart, from the log and not from the config alone.
    one.kill();
    one.start().await.unwrap();
    let list = poll_until(
        "policies after the restart",
        std::time::Duration::from_secs(15),
        || async { cli.json(&["policy", "list", "--json"]).ok() },
    )
    .await
    .unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["hourly", "nightly"]);

    // Delete, then it is gone.
    let o = cli.run(&["policy", "delete", "hourly"]).unwrap();
    assert!(o.status.success());
    let o = cli.run(&["policy", "get", "hourly"]).unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("there is no policy \"hourly\""),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[tokio::test]
async fn wrong_policies_are_refused_with_the_reason() {
    let fleet = FleetDir::new(&[1], &[]).unwrap();
    let (one, cli) = single_node(&fleet, &CoordinatorOptions::default())
        .await
        .unwrap();
    let _logs = Logs(vec![one.log.clone()]);
    let cases = [
        (
            HOURLY.replace("clusters = [\"sessions\"]", "cluster = [\"sessions\"]"),
            "unknown field `cluster`",
        ),
        (
            HOURLY.replace("schedule = \"every 1h\"", "schedule = \"61 * * * *\""),
            "outside 0–59",
        ),
        (
            HOURLY.replace("consistency = \"simultaneous\"", "min_regions = 2"),
            "min_regions 2 must be between 1 and the 1 destinations",
        ),
        (
            HOURLY.replace("keep_hourly = 24", "keep_hourly = 24\nkeep_yearly = 1"),
            "unknown field `keep_yearly`",
        ),
    ];
    for (i, (text, says)) in cases.iter().enumerate() {
        let file = fleet.path().join(format!("bad-{i}.toml"));
        std::fs::write(&file, text).unwrap();
        let o = cli
            .run(&["policy", "set", "--file", file.to_str().unwrap()])
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "case {i} was accepted");
        assert!(err.contains(says), "case {i}: {err}");
    }
    let list = cli.json(&["policy", "list", "--json"]).unwrap();
    assert_eq!(list, serde_json::json!([]));
}
