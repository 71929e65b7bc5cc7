//! Job leases and restarts: a job whose agent stops reporting fails when its lease expires; a job
//! held by an agent process that restarted is failed, never run a second time.

use std::time::Duration;

use fleetsnap_testkit::fleet::{Agent, CoordinatorOptions, FleetDir, Logs, Watched, single_node};
use fleetsnap_testkit::redis::RedisOptions;
use fleetsnap_testkit::{ReplicaSet, poll_until};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_expire_and_restarted_agents_never_rerun_a_job() {
    let fleet = FleetDir::new(&[1], &["a1"]).unwrap();
    let opts = CoordinatorOptions {
        lease_seconds: 3,
        ..Default::default()
    };
    let (one, cli) = single_node(&fleet, &opts).await.unwrap();
    // Each snapshot waits 5 s for the replica's fork: long enough to kill the agent mid-job.
    let pair = ReplicaSet::start(
        1,
        RedisOptions::default().arg("repl-diskless-sync-delay", "5"),
    )
    .await
    .unwrap();
    let watched = [Watched::new("replica", pair.replicas[0].url(), "c")];
    let mut agent = Agent::configure(
        &fleet,
        "a1",
        std::slice::from_ref(&one.address),
        &watched,
        false,
    )
    .unwrap();
    agent.start().unwrap();
    let _logs = Logs(vec![one.log.clone(), agent.log.clone()]);
    poll_until("agent reports", Duration::from_secs(15), || async {
        let s = cli.json(&["status", "--json"]).ok()?;
        (s["agents"][0]["connected"] == true).then_some(())
    })
    .await
    .unwrap();
    let dest = format!("file://{}", fleet.path().join("backups").display());
    let submit = || {
        let j = cli
            .json(&[
                "job",
                "snapshot",
                "--agent",
                "a1",
                "--instance",
                "replica",
                "--to",
                &dest,
                "--json",
            ])
            .unwrap();
        j["job"].as_u64().unwrap().to_string()
    };
    // `job show` exits 1 for a failed job; its JSON is printed all the same.
    let show = |id: &str| -> Option<Value> {
        let o = cli.run(&["job", "show", id]).ok()?;
        serde_json::from_slice(&o.stdout).ok()
    };
    let running = |id: String| {
        let show = &show;
        async move {
            poll_until("job running", Duration::from_secs(10), || async {
                (show(&id)?["state"]["state"] == "running").then_some(())
            })
            .await
            .unwrap();
        }
    };
    let done = |id: String| {
        let show = &show;
        async move {
            poll_until("job done", Duration::from_secs(30), || async {
                let j = show(&id)?;
                (j["state"]["state"] == "done").then_some(j)
            })
            .await
            .unwrap()
        }
    };

    // 1. The agent dies mid-job and stays away: the lease expires, the job fails saying so.
    let first = submit();
    running(first.clone()).await;
    agent.kill();
    let j = done(first).await;
    assert_eq!(j["state"]["outcome"], "failed", "{j:#}");
    assert!(
        j["state"]["reason"]
            .as_str()
            .unwrap()
            .contains("lease expired"),
        "{j:#}"
    );

    // 2. The agent restarts at once while holding a job: the job fails, it is not run again.
    agent.start().unwrap();
    let second = submit();
    running(second.clone()).await;
    agent.kill();
    agent.start().unwrap();
    let j = done(second).await;
    assert_eq!(j["state"]["outcome"], "failed", "{j:#}");
    assert!(
        j["state"]["reason"].as_str().unwrap().contains("restarted"),
        "{j:#}"
    );
    assert_eq!(j["dispatches"], 1, "{j:#}");

    // 3. A job on the restarted agent runs to the end, once.
    let third = submit();
    let j = done(third).await;
    assert_eq!(j["state"]["outcome"], "succeeded", "{j:#}");
    let backups: Vec<_> = std::fs::read_dir(fleet.path().join("backups/c"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        backups.len(),
        1,
        "only the third job stored a backup: {backups:?}"
    );
    agent.kill();
}
