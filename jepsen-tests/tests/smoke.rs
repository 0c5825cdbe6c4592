//! The smoke schedule (one partition, one kill, one pause, one clock jump) against a real
//! cluster on a private network, with REST, gRPC and Kafka clients: the checker finds no
//! anomaly. Needs root (namespaces, nftables, mounts), like the harness.

use std::process::Command;

#[test]
fn the_smoke_schedule_finds_no_anomaly() {
    let out = tempfile::tempdir().expect("temp dir");
    let status = Command::new(env!("CARGO_BIN_EXE_sentinel-jepsen"))
        .args([
            "--schedule",
            "smoke",
            "--seed",
            "1",
            "--time-limit",
            "100",
            "--rate",
            "200",
        ])
        .arg("--sentinel")
        .arg(sentinel_testkit::sentinel_bin())
        .arg("--broker")
        .arg(sentinel_testkit::kafka::broker_bin())
        .arg("--out")
        .arg(out.path())
        .status()
        .expect("the harness runs");
    if !status.success() {
        let kept = out.keep();
        panic!(
            "the smoke schedule failed ({status}); history, verdict and logs in {}",
            kept.display()
        );
    }
}
