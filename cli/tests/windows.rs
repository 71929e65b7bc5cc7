//! A backup window end to end: real coordinator, agents and Redis, a Garage and a moto region.
//! The planner ranks a replica that lags behind the one that does not (though the lagging one
//! sits in the policy's preferred zone), passes over a replica whose link is down, one in the
//! middle of a BGSAVE and the primary, and takes the freshest replica; the set is complete in
//! both regions and restores to the data.

use std::path::Path;
use std::time::Duration;

use fleetsnap_testkit::data::{Dataset, assert_same_data, write_dataset};
use fleetsnap_testkit::fleet::{Agent, Logs, Placed, Watched, restore_and_serve, single_node};
use fleetsnap_testkit::poll_until;
use fleetsnap_testkit::proxy::Relay;
use fleetsnap_testkit::redis::{RedisOptions, RedisServer, ReplicaSet};
use fleetsnap_testkit::s3::{Garage, Moto, credentials_file};

async fn offset(s: &RedisServer) -> Option<String> {
    s.info("replication", "master_repl_offset").await.ok()?
}

fn watched(name: &str, s: &RedisServer) -> Watched {
    Watched::new(name, s.url(), "shop")
}

#[tokio::test]
async fn a_window_takes_the_freshest_healthy_replica_and_stores_a_complete_set_in_both_regions() {
    let fleet = fleetsnap_testkit::fleet::FleetDir::new(&[1], &["a1", "a2", "a3", "a4"]).unwrap();
    let (coordinator, cli) = single_node(&fleet, &Default::default()).await.unwrap();
    let garage = Garage::start().await.unwrap();
    let moto = Moto::start().await.unwrap();
    garage.create_bucket("fleet").await.unwrap();
    moto.region.create_bucket("fleet").await.unwrap();
    let creds = credentials_file(fleet.path(), &[&garage.region, &moto.region]).unwrap();
    let set = ReplicaSet::start(3, RedisOptions::default()).await.unwrap();
    // Lagging: a fourth replica reaches the primary through a relay that will hold the
    // primary's stream; its link stays up (nothing times out within the test) while it falls
    // behind.
    let relay = Relay::start(([127, 0, 0, 1], set.primary.port()).into())
        .await
        .unwrap();
    let lagging = RedisServer::start().await.unwrap();
    lagging
        .cmd(&["REPLICAOF", "127.0.0.1", &relay.addr.port().to_string()])
        .await
        .unwrap();
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
    poll_until(
        "the lagging replica in sync before it lags",
        Duration::from_secs(20),
        || async {
            let link = lagging
                .info("replication", "master_link_status")
                .await
                .ok()?;
            let (p, r) = (offset(&set.primary).await?, offset(&lagging).await?);
            (link.as_deref() == Some("up") && p == r).then_some(())
        },
    )
    .await
    .unwrap();
    relay.hold();
    for i in 0..200 {
        set.primary
            .cmd(&["SET", &format!("after-hold:{i}"), "x"])
            .await
            .unwrap();
    }
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
        Agent::configure(
            &fleet,
            "a4",
            &coords,
            &[watched("lagging", &lagging).in_zone("z1")],
            false,
        )
        .unwrap(),
    ];
    for a in &mut agents {
        a.env("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap());
        a.start().unwrap();
    }
    let _logs = Logs::of(std::slice::from_ref(&coordinator), &agents);

    let (g, m) = (
        garage.region.dest("fleet", "backups"),
        moto.region.dest("fleet", "backups"),
    );
    let policy = format!(
        r#"
name = "shop-now"
clusters = ["shop"]
consistency = "independent"
min_regions = 2
preferred_zones = ["z1"]

[[destinations]]
region = "garage"
url = "{g}"

[[destinations]]
region = "moto"
url = "{m}"
"#
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
            let lag = |name: &str| {
                nodes
                    .iter()
                    .find(|n| n["name"] == name)?
                    .get("lag_bytes")?
                    .as_u64()
            };
            // The healthy replica's report caught up with the primary's; the lagging one's
            // cannot.
            (nodes.len() == 5
                && lag("healthy")? == 0
                && lag("lagging")? > 0
                && state("lagging")?.0 == "up"
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
    let lagging_choice = nodes.iter().find(|n| n["name"] == "lagging").unwrap();
    assert_eq!(lagging_choice["rank"], 2, "{shard}");
    // The primary only after every replica (allow_primary = fallback).
    let primary_choice = nodes.iter().find(|n| n["name"] == "primary").unwrap();
    assert_eq!(primary_choice["rank"], 3, "{shard}");
    let reason = |name: &str| {
        nodes.iter().find(|n| n["name"] == name).unwrap()["reason"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        reason("lagging").contains("bytes behind the primary"),
        "{shard}"
    );
    assert!(
        reason("down").contains("link to the primary is down"),
        "{shard}"
    );
    assert!(
        reason("busy").contains("fork is already running"),
        "{shard}"
    );
    assert!(
        reason("primary").contains("only if every replica fails"),
        "{shard}"
    );

    let sets = doc["sets"].as_array().unwrap();
    assert_eq!(sets.len(), 1);
    assert_eq!(sets[0]["state"], "complete", "{}", sets[0]);
    assert_eq!(sets[0]["regions"]["garage"]["state"], "complete");
    assert_eq!(sets[0]["regions"]["moto"]["state"], "complete");
    let id = doc["backup_id"].as_str().unwrap().to_string();
    let manifest = format!("backups/shop/{id}/manifest.json");
    assert!(
        garage
            .region
            .keys("fleet")
            .await
            .unwrap()
            .contains(&manifest)
    );
    assert!(moto.region.keys("fleet").await.unwrap().contains(&manifest));
    // The catalog lists it.
    let list = cli.json(&["backup", "list", "--json"]).unwrap();
    assert_eq!(list[0]["backup_id"], id.as_str());

    // Restore from moto and compare with the primary.
    let restored = restore_and_serve(
        &["--from", &m, "--backup", &id],
        &[
            ("AWS_SHARED_CREDENTIALS_FILE", creds.as_path()),
            ("AWS_CONFIG_FILE", Path::new("/dev/null")),
        ],
        &fleet.path().join("restored.rdb"),
        Placed::Rdb,
    )
    .await
    .unwrap();
    assert_same_data(&set.primary, &restored).await.unwrap();
    // The lagging replica was behind, not broken: released, it catches up.
    relay.release();
    poll_until(
        "the lagging replica caught up",
        Duration::from_secs(20),
        || async { (offset(&set.primary).await? == offset(&lagging).await?).then_some(()) },
    )
    .await
    .unwrap();
}
