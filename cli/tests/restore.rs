//! `fleetsnap restore` and `fleetsnap drill` through real coordinator and agent processes, with a
//! moto S3 region and a local-directory region: restores read the nearest healthy region, fall
//! back past a corrupted object and a stopped region, `replace` puts the backup back into the
//! cluster's own primary, and drills pass on a good backup and fail loudly on a tampered one.

use std::time::Duration;

use fleetsnap_testkit::data::{Dataset, assert_same_data, write_dataset, write_extras};
use fleetsnap_testkit::fleet::{Agent, Cli, FleetDir, Logs, Watched, single_node};
use fleetsnap_testkit::poll_until;
use fleetsnap_testkit::redis::{RedisOptions, RedisServer, ReplicaSet};
use fleetsnap_testkit::s3::{Moto, credentials_file};

/// An online restore of the cluster's latest set into a fresh server: the server and the
/// restore's report.
async fn restore_online(cli: &Cli) -> (RedisServer, serde_json::Value) {
    let target = RedisServer::start().await.unwrap();
    let (ok, doc) = cli
        .run_json(&[
            "restore",
            "--cluster",
            "shop",
            "--mode",
            "online",
            "--target",
            &target.url(),
            "--wait",
            "50",
            "--json",
        ])
        .unwrap();
    assert!(ok, "{doc:#}");
    (target, doc[0]["report"]["shards"][0]["read"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_fall_back_across_regions_replace_the_primary_and_drills_catch_tampering() {
    let fleet = FleetDir::new(&[1], &["a1", "a2"]).unwrap();
    let (coordinator, cli) = single_node(&fleet, &Default::default()).await.unwrap();
    let mut moto = Moto::start().await.unwrap();
    moto.region.create_bucket("fleet").await.unwrap();
    let creds = credentials_file(fleet.path(), &[&moto.region]).unwrap();
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
    write_extras(&set.primary).await.unwrap();
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
            &[Watched::new(name, server.url(), "shop").started_by(&server.start_command())],
            false,
        )
        .unwrap();
        a.add_config(&format!(
            "[drill]\nwork_dir = \"{}\"\ntimeout_seconds = 120\n",
            fleet.path().join(format!("drill-{id}")).display()
        ))
        .unwrap();
        a.env("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap());
        a.start().unwrap();
        agents.push(a);
    }
    let _logs = Logs::of(&[], &agents);
    let near = moto.region.dest("fleet", "backups");
    let far_dir = fleet.path().join("far");
    let far = format!("file://{}", far_dir.display());
    // The policy lists moto first: the nearest region.
    cli.set_policy(
        fleet.path(),
        "two",
        &format!(
            "name = \"two\"\nclusters = [\"shop\"]\nmin_regions = 2\n\n\
             [[destinations]]\nregion = \"near\"\nurl = \"{near}\"\n\n\
             [[destinations]]\nregion = \"far\"\nurl = \"{far}\"\n"
        ),
    )
    .unwrap();
    cli.wait_for_shards(1, 2).await.unwrap();
    let (complete, window) = cli.backup_run("two").unwrap();
    assert!(complete, "{window:#}");
    let id = window["backup_id"].as_str().unwrap().to_string();

    // A drill of the good backup passes, and the list says so.
    let (ok, drill) = cli
        .run_json(&[
            "drill",
            "run",
            "--cluster",
            "shop",
            "--wait",
            "50",
            "--json",
        ])
        .unwrap();
    assert!(ok, "{drill:#}");
    assert_eq!(drill[0]["ok"], true, "{drill:#}");
    assert!(drill[0]["report"]["rpo_seconds"].as_f64().unwrap() >= 0.0);
    let dbs = drill[0]["report"]["dbs"].as_array().unwrap();
    assert!(
        !dbs.is_empty()
            && dbs
                .iter()
                .all(|d| d["digest_found"] == d["digest_recorded"])
    );

    // Every region healthy: the nearest is read, and the data is the source's.
    let (target, read) = restore_online(&cli).await;
    assert!(
        read["destination"].as_str().unwrap().starts_with("s3://"),
        "{read:#}"
    );
    assert_eq!(read["skipped"].as_array().unwrap().len(), 0, "{read:#}");
    assert_same_data(&set.primary, &target).await.unwrap();

    // One byte of the nearest region's object changed: detected, and the far region read.
    let client = moto.region.client();
    let keys = moto.region.keys("fleet").await.unwrap();
    let key = keys
        .iter()
        .find(|k| k.ends_with(".rdb.zst"))
        .unwrap()
        .clone();
    let body = client
        .get_object()
        .bucket("fleet")
        .key(&key)
        .send()
        .await
        .unwrap();
    let original = body.body.collect().await.unwrap().into_bytes().to_vec();
    let mut bytes = original.clone();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    let put = |b: Vec<u8>| {
        client
            .put_object()
            .bucket("fleet")
            .key(&key)
            .body(b.into())
            .send()
    };
    put(bytes).await.unwrap();
    let (target, read) = restore_online(&cli).await;
    assert!(
        read["destination"].as_str().unwrap().starts_with("file://"),
        "{read:#}"
    );
    let skipped = read["skipped"].to_string();
    assert!(skipped.contains("s3://"), "{read:#}");
    assert!(
        skipped.contains("manifest") || skipped.contains("sha256"),
        "{read:#}"
    );
    assert_same_data(&set.primary, &target).await.unwrap();

    // The object mended, the region stopped: the far region is read.
    put(original).await.unwrap();
    moto.kill();
    let (target, read) = restore_online(&cli).await;
    assert!(
        read["destination"].as_str().unwrap().starts_with("file://"),
        "{read:#}"
    );
    assert_eq!(read["skipped"].as_array().unwrap().len(), 1, "{read:#}");
    assert_same_data(&set.primary, &target).await.unwrap();

    // Writes after the backup; a replace restore of the primary puts the backup back.
    set.primary
        .cmd(&["SET", "after:backup", "1"])
        .await
        .unwrap();
    set.primary.cmd(&["DEL", "key:1"]).await.unwrap();
    let (ok, doc) = cli
        .run_json(&[
            "restore", &id, "--mode", "replace", "--wait", "50", "--json",
        ])
        .unwrap();
    assert!(ok, "{doc:#}");
    assert_eq!(
        doc.as_array().unwrap().len(),
        1,
        "one shard, one job: {doc:#}"
    );
    assert_eq!(
        doc[0]["agent"], "a1",
        "the primary's agent replaces it: {doc:#}"
    );
    assert!(doc[0]["report"]["down_seconds"].as_f64().unwrap() > 0.0);
    assert_same_data(&target, &set.primary).await.unwrap();

    // A drill schedule on the policy runs drills by itself.
    let policy = |drill: &str| {
        format!(
            "name = \"two\"\nclusters = [\"shop\"]\nmin_regions = 2\n\n\
             [[destinations]]\nregion = \"near\"\nurl = \"{near}\"\n\n\
             [[destinations]]\nregion = \"far\"\nurl = \"{far}\"\n{drill}"
        )
    };
    cli.set_policy(
        fleet.path(),
        "two",
        &policy("\n[drill]\nschedule = \"every 2s\"\nagent = \"a2\"\n"),
    )
    .unwrap();
    let scheduled = poll_until("a scheduled drill", Duration::from_secs(40), || async {
        let list = cli.json(&["drill", "list", "--json"]).ok()?;
        list.as_array()?
            .iter()
            .find(|d| d["scheduled_by"] == "two" && d["state"] != "running")
            .cloned()
    })
    .await
    .unwrap();
    assert_eq!(scheduled["state"], "passed", "{scheduled:#}");
    assert_eq!(scheduled["agent"], "a2", "{scheduled:#}");
    cli.set_policy(fleet.path(), "two", &policy("")).unwrap();
    // Let a drill the schedule started just before end.
    poll_until(
        "scheduled drills ended",
        Duration::from_secs(40),
        || async {
            let list = cli.json(&["drill", "list", "--json"]).ok()?;
            list.as_array()?
                .iter()
                .all(|d| d["state"] != "running")
                .then_some(())
        },
    )
    .await
    .unwrap();

    // The far region's object tampered with too: the drill has no good copy left and fails,
    // loudly, and the list records it.
    let object = walk(&far_dir)
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(".rdb.zst"))
        .unwrap();
    let far_original = std::fs::read(&object).unwrap();
    let mut bytes = far_original.clone();
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0x40;
    std::fs::write(&object, bytes).unwrap();
    let o = cli
        .run(&["drill", "run", "--cluster", "shop", "--wait", "50"])
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!o.status.success(), "{text}");
    assert!(text.contains("FAILED"), "{text}");
    let list = cli.json(&["drill", "list", "--json"]).unwrap();
    let last = list.as_array().unwrap().last().unwrap();
    assert_eq!(last["state"], "failed", "{list:#}");
    assert!(last["scheduled_by"].is_null(), "{last:#}");
    assert_eq!(list[0]["state"], "passed", "{list:#}");

    // The near region is gone for good (moto stays down). The far object mended, the
    // region-loss runbook copies the set from far into a standby region, switches the policy to
    // it, and checks; restores then read the standby first.
    std::fs::write(&object, &far_original).unwrap();
    // A newer window while near is gone: its set is whole in far only.
    let (complete, newer) = cli.backup_run("two").unwrap();
    assert!(!complete, "near is down: {newer:#}");
    let newer_id = newer["backup_id"].as_str().unwrap().to_string();
    let standby_dir = fleet.path().join("standby");
    let standby = format!("standby=file://{}", standby_dir.display());
    let region_loss = [
        "runbook",
        "region-loss",
        "--region",
        "near",
        "--standby",
        &standby,
        "--yes",
        "--json",
    ];
    let (ok, rb) = cli.run_json(&region_loss).unwrap();
    assert!(ok, "{rb:#}");
    // The newest set whole outside near, then the older one near held: both copied from far.
    let steps = rb["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 4, "two copies, switch, check: {rb:#}");
    for (step, set) in [(0, &newer_id), (1, &id)] {
        assert!(
            steps[step]["title"]
                .as_str()
                .unwrap()
                .contains(&format!("shop/{set} from far to standby")),
            "{rb:#}"
        );
    }
    // Both restore from the standby alone.
    for set in [&newer_id, &id] {
        let out = fleetsnap_testkit::fleet::restore(
            &[
                "--from",
                &format!("file://{}", standby_dir.display()),
                "--backup",
                set,
                "--to-file",
                fleet.path().join(format!("{set}.rdb")).to_str().unwrap(),
            ],
            &[],
        );
        assert!(out.is_ok(), "{set}: {out:?}");
    }
    let policy = cli.json(&["policy", "get", "two", "--json"]).unwrap();
    let regions: Vec<&str> = policy["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["region"].as_str().unwrap())
        .collect();
    assert_eq!(regions, ["standby", "far"], "{policy:#}");
    let (target, read) = restore_online(&cli).await;
    assert!(
        read["destination"]
            .as_str()
            .unwrap()
            .contains(standby_dir.to_str().unwrap()),
        "{read:#}"
    );
    assert_same_data(&set.primary, &target).await.unwrap();
    // Run again, it has nothing to copy: the set is already complete in the standby.
    let (ok, again) = cli.run_json(&region_loss).unwrap();
    assert!(ok, "{again:#}");
    assert_eq!(again["steps"].as_array().unwrap().len(), 2, "{again:#}");
}

fn walk(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}
