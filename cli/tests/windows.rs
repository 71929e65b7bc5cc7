//! A backup window end to end: real coordinator, agents and Redis, two file regions. The planner
//! passes over a replica whose link is down, one in the middle of a BGSAVE and the primary, and
//! takes the healthy replica; the set is complete in both regions and restores to the data.

use std::time::Duration;

use fleetsnap_testkit::data::{Dataset, assert_same_data, write_dataset};
use fleetsnap_testkit::fleet::{Agent, Logs, Watched, restore, single_node};
use fleetsnap_testkit::poll_until;
use fleetsnap_testkit::redis::{RedisOptions, RedisServer, ReplicaSet};

fn watched(name: &str, s: &RedisServer) -> Watched {
    Watched {
        name: name.into(),
        url: s.url(),
        cluster: "shop".into(),
    }
}

#[tokio::test]
async fn a_window_takes_the_healthy_replica_and_stores_a_complete_set_in_both_regions() {
    let fleet = fleetsnap_testkit::fleet::FleetDir::new(&[1], &["a1", "a2", "a3"]).unwrap();
    let (coordinator, cli) = single_node(&fleet, &Default::default()).await.unwrap();
    let set = ReplicaSet::start(3, RedisOptions::default()).await.unwrap();
    write_dataset(
        &set.primary,
        &Dataset {
            small_keys: 2000,
            big_value_bytes: 1 << 20,
        },
    )
    .await
    .unwrap();
    set.wait_synced().await.unwrap();
    let (healthy, down, busy) = (&set.replicas[0], &set.replicas[1], &set.replicas[2]);
    // Down: the replica can no longer authenticate to its primary.
    down.cmd(&["CONFIG", "SET", "masteruser", "nobody"])
        .await
        .unwrap();
    down.cmd(&["CONFIG", "SET", "masterauth", "wrong"])
        .await
        .unwrap();
    down.cmd(&["CLIENT", "KILL", "TYPE", "master"])
        .await
        .unwrap();
    // Busy: a BGSAVE that takes a minute (100 ms per key).
    busy.cmd(&["CONFIG", "SET", "rdb-key-save-delay", "100000"])
        .await
        .unwrap();
    busy.cmd(&["BGSAVE"]).await.unwrap();

    let coords = vec![coordinator.address.clone()];
    let mut agents = vec![
        Agent::configure(
            &fleet,
            "a1",
            &coords,
            &[watched("primary", &set.primary)],
            false,
        )
        .unwrap(),
        Agent::configure(
            &fleet,
            "a2",
            &coords,
            &[watched("healthy", healthy), watched("down", down)],
            false,
        )
        .unwrap(),
        Agent::configure(&fleet, "a3", &coords, &[watched("busy", busy)], false).unwrap(),
    ];
    for a in &mut agents {
        a.start().unwrap();
    }
    let _logs = Logs::of(std::slice::from_ref(&coordinator), &agents);

    let regions = [fleet.path().join("region-a"), fleet.path().join("region-b")];
    let policy = format!(
        r#"
name = "shop-now"
clusters = ["shop"]
consistency = "independent"
min_regions = 2

[[destinations]]
region = "a"
url = "file://{}"

[[destinations]]
region = "b"
url = "file://{}"
"#,
        regions[0].display(),
        regions[1].display()
    );
    cli.set_policy(fleet.path(), "shop-now", &policy).unwrap();

    // Every node reported, with the link down and the BGSAVE seen.
    poll_until(
        "the shard as the test made it",
        Duration::from_secs(20),
        || async {
            let s = cli.json(&["status", "--json"]).ok()?;
            let nodes = s["clusters"][0]["shards"][0]["nodes"].as_array()?.clone();
            let state = |name: &str| {
                nodes
                    .iter()
                    .find(|n| n["name"] == name)
                    .map(|n| (n["link"].clone(), n["persistence"].clone()))
            };
            (nodes.len() == 4
                && state("down")?.0 == "down"
                && state("busy")?.1 == "bgsave"
                && state("healthy")?.0 == "up")
                .then_some(())
        },
    )
    .await
    .unwrap();

    let (ok, doc) = cli.backup_run("shop-now").unwrap();
    assert!(ok, "{doc}");
    let shard = &doc["shards"][0];
    let nodes = shard["plan"]["nodes"].as_array().unwrap();
    let chosen = nodes.iter().find(|n| n["rank"] == 1).unwrap();
    assert_eq!(chosen["name"], "healthy", "{shard}");
    let reason = |name: &str| {
        nodes.iter().find(|n| n["name"] == name).unwrap()["reason"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        reason("down").contains("link to the primary is down"),
        "{shard}"
    );
    assert!(
        reason("busy").contains("fork is already running"),
        "{shard}"
    );
    assert!(
        reason("primary").contains("only when no replica qualifies"),
        "{shard}"
    );

    let sets = doc["sets"].as_array().unwrap();
    assert_eq!(sets.len(), 1);
    assert_eq!(sets[0]["state"], "complete", "{}", sets[0]);
    assert_eq!(sets[0]["regions"]["a"]["state"], "complete");
    assert_eq!(sets[0]["regions"]["b"]["state"], "complete");
    let id = doc["backup_id"].as_str().unwrap().to_string();
    for r in &regions {
        assert!(r.join("shop").join(&id).join("manifest.json").exists());
    }
    // The catalog lists it.
    let list = cli.json(&["backup", "list", "--json"]).unwrap();
    assert_eq!(list[0]["backup_id"], id.as_str());

    // Restore from region b and compare with the primary.
    let rdb = fleet.path().join("restored.rdb");
    restore(
        &[
            "--from",
            &format!("file://{}", regions[1].display()),
            "--backup",
            &id,
            "--to-file",
            rdb.to_str().unwrap(),
        ],
        &[],
    )
    .unwrap();
    let restored = RedisServer::start_with(RedisOptions {
        rdb: Some(rdb),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_same_data(&set.primary, &restored).await.unwrap();
}
