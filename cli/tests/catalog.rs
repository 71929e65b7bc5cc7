//! The catalog across regions and coordinator loss, with real Garage and moto regions:
//! a region down during a window leaves the set degraded and `backup repair` makes it complete;
//! `catalog rebuild` after the coordinator's data directory is gone recovers every complete set;
//! retention prunes exactly the sets a table of GFS cases says, in every region, and collects
//! objects no manifest lists once they are past their grace period; a policy's Object Lock locks
//! every object a window writes to S3.

use std::path::Path;
use std::time::Duration;

use fleetsnap_testkit::data::{Dataset, assert_same_data, write_dataset};
use fleetsnap_testkit::fleet::{
    Agent, Cli, Coordinator, FleetDir, Logs, Placed, Watched, restore_and_serve, single_node,
};
use fleetsnap_testkit::poll_until;
use fleetsnap_testkit::redis::{RedisOptions, RedisServer, ReplicaSet};
use fleetsnap_testkit::s3::{Garage, Moto, credentials_file};

fn window(cli: &Cli, policy: &str) -> serde_json::Value {
    cli.backup_run(policy).unwrap().1
}

/// The coordinator's data directory lost: it starts again knowing nothing, and the `agents`
/// agents register with it again.
async fn wipe_and_restart(coordinator: &mut Coordinator, cli: &Cli, agents: usize) {
    coordinator.kill();
    std::fs::remove_dir_all(&coordinator.data_dir).unwrap();
    coordinator.start().await.unwrap();
    poll_until("the agents are back", Duration::from_secs(30), || async {
        let s = cli.json(&["status", "--json"]).ok()?;
        (s["agents"].as_array()?.len() == agents).then_some(())
    })
    .await
    .unwrap();
}

async fn wait_for_shard(cli: &Cli) {
    poll_until("the pair reported", Duration::from_secs(30), || async {
        let s = cli.json(&["status", "--json"]).ok()?;
        (s["clusters"][0]["shards"][0]["nodes"].as_array()?.len() == 2).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_region_down_degrades_a_set_repair_completes_it_and_a_rebuild_finds_every_set() {
    let fleet = FleetDir::new(&[1], &["a1", "a2"]).unwrap();
    let (mut coordinator, cli) = single_node(&fleet, &Default::default()).await.unwrap();
    let garage = Garage::start().await.unwrap();
    let mut moto = Moto::start().await.unwrap();
    garage.create_bucket("fleet").await.unwrap();
    moto.region.create_bucket("fleet").await.unwrap();
    let creds = credentials_file(fleet.path(), &[&garage.region, &moto.region]).unwrap();
    let set = ReplicaSet::start(1, RedisOptions::default()).await.unwrap();
    write_dataset(
        &set.primary,
        &Dataset {
            small_keys: 3000,
            big_value_bytes: 1 << 20,
        },
    )
    .await
    .unwrap();
    set.wait_synced().await.unwrap();
    let coords = vec![coordinator.address.clone()];
    let mut agents = Vec::new();
    for (id, name, server) in [
        ("a1", "primary", &set.primary),
        ("a2", "replica", &set.replicas[0]),
    ] {
        let mut a = Agent::configure(
            &fleet,
            id,
            &coords,
            &[Watched::new(name, server.url(), "shop")],
            false,
        )
        .unwrap();
        a.env("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap());
        a.start().unwrap();
        agents.push(a);
    }
    let _logs = Logs::of(std::slice::from_ref(&coordinator), &agents);
    let (g, m) = (
        garage.region.dest("fleet", "backups"),
        moto.region.dest("fleet", "backups"),
    );
    cli.set_policy(
        fleet.path(),
        "two",
        &format!(
            "name = \"two\"\nclusters = [\"shop\"]\nmin_regions = 2\n\n\
             [[destinations]]\nregion = \"garage\"\nurl = \"{g}\"\n\n\
             [[destinations]]\nregion = \"moto\"\nurl = \"{m}\"\n"
        ),
    )
    .unwrap();
    wait_for_shard(&cli).await;

    let first = window(&cli, "two");
    assert_eq!(first["sets"][0]["state"], "complete", "{first}");

    // moto goes down: the next set is only in garage.
    moto.kill();
    let second = window(&cli, "two");
    let s = &second["sets"][0];
    assert_eq!(s["state"], "degraded", "{second}");
    assert_eq!(s["regions"]["garage"]["state"], "complete");
    assert_eq!(s["regions"]["moto"]["state"], "failed");
    let id2 = second["backup_id"].as_str().unwrap().to_string();

    // moto comes back, empty; repair copies both sets' objects from garage.
    let port: u16 = moto
        .region
        .endpoint
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let moto = Moto::start_on(port).await.unwrap();
    moto.region.create_bucket("fleet").await.unwrap();
    // The catalog still counts the first set complete in moto; a verification finds it gone
    // there, and a repair brings it back.
    let id1 = first["backup_id"].as_str().unwrap().to_string();
    let o = cli
        .run(&["backup", "verify", &id1, "--wait", "120"])
        .unwrap();
    assert!(
        !o.status.success(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let list = cli.json(&["backup", "list", "--json"]).unwrap();
    let one = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["backup_id"] == id1.as_str())
        .unwrap();
    assert_eq!(one["state"], "degraded", "{one}");
    let o = cli
        .run(&["backup", "repair", &id1, "--wait", "120"])
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let o = cli
        .run(&["backup", "repair", &id2, "--wait", "120"])
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(text.contains("is now complete"), "{text}");
    // The repaired copy restores to the data.
    let restored = restore_and_serve(
        &["--from", &m, "--backup", &id2],
        &[
            ("AWS_SHARED_CREDENTIALS_FILE", creds.as_path()),
            ("AWS_CONFIG_FILE", Path::new("/dev/null")),
        ],
        &fleet.path().join("from-moto.rdb"),
        Placed::Rdb,
    )
    .await
    .unwrap();
    assert_same_data(&set.primary, &restored).await.unwrap();
    // A verification reads it back in both regions.
    let o = cli
        .run(&["backup", "verify", &id2, "--wait", "120"])
        .unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );

    // Every coordinator's data directory is lost: a new one knows no set until it rebuilds.
    wipe_and_restart(&mut coordinator, &cli, 2).await;
    let list = cli.json(&["backup", "list", "--json"]).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 0, "{list}");
    let o = cli
        .run(&[
            "catalog",
            "rebuild",
            "--from",
            &format!("garage={g}"),
            "--from",
            &format!("moto={m}"),
        ])
        .unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let list = cli.json(&["backup", "list", "--json"]).unwrap();
    let mut ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert_eq!(s["state"], "complete", "{s}");
            assert_eq!(s["regions"]["garage"]["state"], "complete", "{s}");
            assert_eq!(s["regions"]["moto"]["state"], "complete", "{s}");
            s["backup_id"].as_str().unwrap().to_string()
        })
        .collect();
    ids.sort();
    let mut expected = vec![first["backup_id"].as_str().unwrap().to_string(), id2];
    expected.sort();
    assert_eq!(ids, expected);

    // Lost again: the rebuild-coordinator runbook does the same, and its check says it worked.
    wipe_and_restart(&mut coordinator, &cli, 2).await;
    let rebuilt = cli
        .json(&[
            "runbook",
            "rebuild-coordinator",
            "--from",
            &format!("garage={g}"),
            "--from",
            &format!("moto={m}"),
            "--yes",
            "--json",
        ])
        .unwrap();
    assert_eq!(rebuilt["state"]["state"], "succeeded", "{rebuilt:#}");
    assert_eq!(rebuilt["findings"]["sets_found"], "2", "{rebuilt:#}");
    let list = cli.json(&["backup", "list", "--json"]).unwrap();
    let mut again: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] == "complete")
        .map(|s| s["backup_id"].as_str().unwrap().to_string())
        .collect();
    again.sort();
    assert_eq!(again, expected);
}

/// Copies a set's directory to a new id and date, as if a window had written it then.
fn fabricate(region: &Path, cluster: &str, from: &str, id: &str, at: &str) {
    let src = region.join(cluster).join(from);
    let dst = region.join(cluster).join(id);
    std::fs::create_dir_all(&dst).unwrap();
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap();
        if f.file_name() != "manifest.json" {
            std::fs::copy(f.path(), dst.join(f.file_name())).unwrap();
        }
    }
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("manifest.json")).unwrap()).unwrap();
    m["backup_id"] = id.into();
    m["policy"] = "gfs".into();
    m["started_at"] = at.into();
    m["finished_at"] = at.into();
    std::fs::write(
        dst.join("manifest.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
}

fn dirs(region: &Path, cluster: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(region.join(cluster))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A standalone server with 500 keys, watched as cluster `shop` by agent `a1`, started with
/// `env`.
async fn solo(
    fleet: &FleetDir,
    coordinator: &Coordinator,
    env: &[(&str, &str)],
) -> (RedisServer, Agent) {
    let server = RedisServer::start().await.unwrap();
    write_dataset(
        &server,
        &Dataset {
            small_keys: 500,
            big_value_bytes: 0,
        },
    )
    .await
    .unwrap();
    let mut agent = Agent::configure(
        fleet,
        "a1",
        std::slice::from_ref(&coordinator.address),
        &[Watched::new("solo", server.url(), "shop")],
        false,
    )
    .unwrap();
    for (k, v) in env {
        agent.env(k, v);
    }
    agent.start().unwrap();
    (server, agent)
}

#[tokio::test]
async fn retention_prunes_exactly_the_sets_gfs_says_in_every_region() {
    let fleet = FleetDir::new(&[1], &["a1"]).unwrap();
    let (coordinator, cli) = single_node(&fleet, &Default::default()).await.unwrap();
    let (_server, agent) = solo(&fleet, &coordinator, &[]).await;
    let _logs = Logs::of(
        std::slice::from_ref(&coordinator),
        std::slice::from_ref(&agent),
    );
    let regions = [fleet.path().join("region-a"), fleet.path().join("region-b")];
    let dests = format!(
        "[[destinations]]\nregion = \"a\"\nurl = \"file://{}\"\n\n\
         [[destinations]]\nregion = \"b\"\nurl = \"file://{}\"\n",
        regions[0].display(),
        regions[1].display()
    );
    cli.set_policy(
        fleet.path(),
        "seed",
        &format!("name = \"seed\"\nclusters = [\"shop\"]\nmin_regions = 2\n\n{dests}"),
    )
    .unwrap();
    cli.set_policy(
        fleet.path(),
        "gfs",
        &format!(
            "name = \"gfs\"\nclusters = [\"shop\"]\nmin_regions = 2\n\n\
             [retention]\nkeep_last = 1\nkeep_daily = 2\nkeep_weekly = 2\nkeep_monthly = 2\n\n{dests}"
        ),
    )
    .unwrap();
    poll_until("the node reported", Duration::from_secs(30), || async {
        let s = cli.json(&["status", "--json"]).ok()?;
        (s["clusters"][0]["shards"].as_array()?.len() == 1).then_some(())
    })
    .await
    .unwrap();
    let seed = window(&cli, "seed");
    assert_eq!(seed["sets"][0]["state"], "complete", "{seed}");
    let seed_id = seed["backup_id"].as_str().unwrap().to_string();

    // The table: (id, when, kept by).
    let table = [
        ("20260302T100000Z-00000a", "2026-03-02T10:00:00Z", None),
        ("20260302T180000Z-00000b", "2026-03-02T18:00:00Z", None),
        (
            "20260304T090000Z-00000c",
            "2026-03-04T09:00:00Z",
            Some("keep_weekly"),
        ),
        (
            "20260309T090000Z-00000d",
            "2026-03-09T09:00:00Z",
            Some("keep_daily"),
        ),
        (
            "20260310T090000Z-00000e",
            "2026-03-10T09:00:00Z",
            Some("keep_last"),
        ),
        (
            "20260220T090000Z-00000f",
            "2026-02-20T09:00:00Z",
            Some("keep_monthly"),
        ),
        ("20260115T090000Z-000010", "2026-01-15T09:00:00Z", None),
    ];
    for r in &regions {
        for (id, at, _) in &table {
            fabricate(r, "shop", &seed_id, id, at);
        }
    }
    // Orphans: objects with no manifest, one past the grace period, one within it.
    let fresh_orphan = fleetsnap_core::BackupId::from_parts(time::OffsetDateTime::now_utc(), 7);
    for (id, _) in [("20250101T000000Z-0000aa", ()), (fresh_orphan.as_str(), ())] {
        let d = regions[0].join("shop").join(id);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("0-16383.rdb.zst"), b"left by a crash").unwrap();
    }
    let from: Vec<String> = ["a", "b"]
        .iter()
        .zip(&regions)
        .map(|(n, r)| format!("{n}=file://{}", r.display()))
        .collect();
    let o = cli
        .run(&["catalog", "rebuild", "--from", &from[0], "--from", &from[1]])
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let dry = cli
        .json(&["backup", "prune", "--policy", "gfs", "--dry-run", "--json"])
        .unwrap();
    for (id, _, kept_by) in &table {
        let d = dry
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["backup_id"] == *id)
            .unwrap_or_else(|| panic!("{id} not decided: {dry}"));
        match kept_by {
            Some(rule) => {
                assert_eq!(d["decision"]["action"], "keep", "{id}: {d}");
                let reasons = d["decision"]["reasons"].to_string();
                assert!(reasons.contains(rule), "{id}: {reasons}");
            }
            None => assert_eq!(d["decision"]["action"], "delete", "{id}: {d}"),
        }
    }
    let o = cli
        .run(&["backup", "prune", "--policy", "gfs", "--json"])
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let mut expected: Vec<String> = table
        .iter()
        .filter(|(_, _, k)| k.is_some())
        .map(|(id, _, _)| id.to_string())
        .collect();
    expected.push(seed_id.clone());
    expected.sort();
    poll_until(
        "the pruned sets gone from the catalog and both regions",
        Duration::from_secs(60),
        || async {
            let list = cli.json(&["backup", "list", "--json"]).ok()?;
            let mut ids: Vec<String> = list
                .as_array()?
                .iter()
                .filter_map(|s| s["backup_id"].as_str().map(str::to_string))
                .collect();
            ids.sort();
            let mut in_b = dirs(&regions[1], "shop");
            in_b.sort();
            let mut in_a: Vec<String> = dirs(&regions[0], "shop")
                .into_iter()
                .filter(|d| d.as_str() != fresh_orphan.as_str())
                .collect();
            in_a.sort();
            (ids == expected && in_a == expected && in_b == expected).then_some(())
        },
    )
    .await
    .unwrap();
    // The orphan within its grace period stays.
    assert!(dirs(&regions[0], "shop").contains(&fresh_orphan.to_string()));
}

#[tokio::test]
async fn a_policy_with_object_lock_locks_every_object_a_window_writes() {
    let fleet = FleetDir::new(&[1], &["a1"]).unwrap();
    let (coordinator, cli) = single_node(&fleet, &Default::default()).await.unwrap();
    let moto = Moto::start().await.unwrap();
    moto.region.create_locked_bucket("vault").await.unwrap();
    let creds = credentials_file(fleet.path(), &[&moto.region]).unwrap();
    let creds = creds.to_str().unwrap();
    let (_server, agent) = solo(
        &fleet,
        &coordinator,
        &[("AWS_SHARED_CREDENTIALS_FILE", creds)],
    )
    .await;
    let _logs = Logs::of(
        std::slice::from_ref(&coordinator),
        std::slice::from_ref(&agent),
    );
    let dest = moto.region.dest("vault", "locked");
    cli.set_policy(
        fleet.path(),
        "vault",
        &format!(
            "name = \"vault\"\nclusters = [\"shop\"]\nmin_regions = 1\n\n\
             [object_lock]\nmode = \"governance\"\ndays = 2\n\n\
             [[destinations]]\nregion = \"moto\"\nurl = \"{dest}\"\n"
        ),
    )
    .unwrap();
    poll_until("the node reported", Duration::from_secs(30), || async {
        let s = cli.json(&["status", "--json"]).ok()?;
        (s["clusters"][0]["shards"][0]["nodes"].as_array()?.len() == 1).then_some(())
    })
    .await
    .unwrap();
    let doc = window(&cli, "vault");
    assert_eq!(doc["sets"][0]["state"], "complete", "{doc}");

    let client = moto.region.client();
    let keys = moto.region.keys("vault").await.unwrap();
    assert!(
        keys.iter().any(|k| k.ends_with("manifest.json")),
        "{keys:?}"
    );
    assert!(keys.iter().any(|k| k.contains(".rdb")), "{keys:?}");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for key in &keys {
        // The lock as S3 reports it on the object (moto answers GetObjectRetention with the
        // object itself, so the headers are read).
        let head = client
            .head_object()
            .bucket("vault")
            .key(key)
            .send()
            .await
            .unwrap();
        assert_eq!(
            head.object_lock_mode().map(|m| m.as_str()),
            Some("GOVERNANCE"),
            "{key}"
        );
        let until = head.object_lock_retain_until_date().unwrap().secs();
        let left = until - now;
        assert!(
            (2 * 86_400 - 600..=2 * 86_400 + 600).contains(&left),
            "{key}: locked for {left} s, not 2 days"
        );
        // The stored version cannot be deleted while it is locked.
        let version = head.version_id().map(str::to_string);
        let deleted = client
            .delete_object()
            .bucket("vault")
            .key(key)
            .set_version_id(version)
            .send()
            .await;
        assert!(deleted.is_err(), "{key}: a locked version was deleted");
    }
}
