//! Real `sentinel node` processes under faults an operator meets: a disk that fills up,
//! and a process paused (SIGSTOP) long enough for its peers to move on without it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sentinel_proto::v1::{ClusterStatusReply, ClusterStatusRequest};
use sentinel_testkit::process::{event, shard, signal, Cluster, Tmpfs};
use sentinel_testkit::wait_for;

const CONVERGE: Duration = Duration::from_secs(90);

/// Batch `n` of a small load, one event on each of four keys; whether all were acknowledged.
async fn write_some(cluster: &Cluster, n: usize) -> bool {
    let mut all_acked = true;
    for service in ["checkout", "search", "support", "summarize"] {
        let id = format!("{service}-{n}");
        let t = cluster.t0 + n as i64 * 100;
        let target = shard(service, "gpt-4o", cluster.shards);
        let acked = cluster
            .ingest(target, vec![event(service, "gpt-4o", t, 300.0, &id)])
            .await
            .is_ok();
        all_acked &= acked;
    }
    all_acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_fills_up_stops_and_rejoins_once_space_returns() {
    let mut cluster = Cluster::new(4, 3, Vec::new());
    // Unmounted lazily when dropped, before the cluster's directory is removed.
    let disk = match Tmpfs::mount(&cluster.data_dir(2), "32m") {
        Ok(disk) => disk,
        Err(reason) => {
            eprintln!("SKIPPED: cannot mount a small filesystem for node 2 ({reason})");
            return;
        }
    };
    for id in 0..3 {
        cluster.add(id);
    }
    cluster.wait_converged(CONVERGE).await;
    assert!(write_some(&cluster, 0).await);

    disk.fill();
    let started = Instant::now();
    let mut batch = 1;
    let exit = loop {
        if let Some(status) = cluster.exited(2) {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "node 2 kept running on a full disk\n{}",
            cluster.logs()
        );
        write_some(&cluster, batch).await;
        batch += 1;
    };
    let stopped_after = started.elapsed();
    assert!(!exit.success(), "a failed node exits with an error: {exit}");
    let log = cluster.log(2);
    assert!(
        log.contains("No space left on device") && log.contains("stopping the node"),
        "the log says why\n{log}"
    );
    // The two others go on without it.
    let more = wait_for(CONVERGE, async || {
        batch += 1;
        write_some(&cluster, batch).await.then_some(())
    })
    .await;
    assert!(more.is_some(), "the others serve on\n{}", cluster.logs());

    // Space returns; the supervisor (here the test) starts the node again, and it catches up.
    disk.free();
    cluster.spawn(2);
    cluster.wait_converged(CONVERGE).await;
    let agreed = wait_for(CONVERGE, async || {
        let status = cluster.status(true).await?;
        status
            .shards
            .iter()
            .all(|s| {
                s.replicas.len() == 3 && s.replicas.iter().all(|r| r.digest == s.replicas[0].digest)
            })
            .then_some(())
    })
    .await;
    assert!(agreed.is_some(), "replicas agree again\n{}", cluster.logs());
    eprintln!(
        "node 2 stopped {} ms after its disk filled",
        stopped_after.as_millis()
    );
}

/// Each shard's leader and the metadata leader, as node `via` sees them.
async fn leaders(cluster: &Cluster, via: u64) -> Option<(Option<u64>, BTreeMap<u32, u64>)> {
    let status: ClusterStatusReply = cluster
        .client(via)
        .await
        .cluster_status(ClusterStatusRequest { digests: false })
        .await
        .ok()?
        .into_inner();
    let shards = status
        .shards
        .iter()
        .map(|s| Some((s.shard, s.leader?)))
        .collect::<Option<BTreeMap<u32, u64>>>()?;
    Some((status.metadata_leader, shards))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_resumed_after_a_long_pause_takes_no_leadership_at_once() {
    const HOLD: Duration = Duration::from_secs(6);
    let cluster = Cluster::start_with(
        3,
        8,
        3,
        vec![(
            "SENTINEL_RAFT__LEADER_HOLD_MS".into(),
            HOLD.as_millis().to_string(),
        )],
    );
    let converged = cluster.wait_converged(CONVERGE).await;
    let victim = 1;
    let led = converged
        .shards
        .iter()
        .filter(|s| s.leader == Some(victim))
        .count();
    assert!(led > 0, "node {victim} leads some shards");

    signal(cluster.pid(victim), "STOP");
    tokio::time::sleep(Duration::from_secs(15)).await;
    let before = wait_for(CONVERGE, async || {
        let seen = leaders(&cluster, 0).await?;
        seen.1.values().all(|&l| l != victim).then_some(seen)
    })
    .await
    .unwrap_or_else(|| panic!("no leader took over\n{}", cluster.logs()));
    signal(cluster.pid(victim), "CONT");

    // For most of the hold, nothing moves: neither the shards the others led all along nor
    // those that moved away, nor the metadata group.
    let resumed = Instant::now();
    while resumed.elapsed() < HOLD - Duration::from_secs(2) {
        if let Some(now) = leaders(&cluster, 0).await {
            assert_eq!(
                now,
                before,
                "leadership moved {} ms after the resume\n{}",
                resumed.elapsed().as_millis(),
                cluster.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Then the resumed node takes its preferred leaderships back.
    cluster.wait_converged(CONVERGE).await;
}
