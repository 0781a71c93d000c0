//! `herald bench`, run as a user runs it: each broker kind ends with a RESULT line whose fields
//! a script can read, every event arrives, and bad arguments are refused with a clear error.
//! (The figures themselves are measured, not asserted: this debug build says nothing about them.)

use std::collections::HashMap;

mod common;
use common::{herald, result};

const RABBITMQ: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn positive(fields: &HashMap<String, String>, key: &str) -> f64 {
    let v: f64 = fields[key]
        .parse()
        .unwrap_or_else(|_| panic!("{key}={} is not a number", fields[key]));
    assert!(v > 0.0, "{key}={v}");
    v
}

/// The RESULT's ratio is Herald's rate over the raw client's, both measured.
fn assert_ratio_of_the_rates(r: &HashMap<String, String>) {
    let herald_eps = positive(r, "herald_eps");
    let raw_eps = positive(r, "raw_eps");
    let ratio = positive(r, "ratio");
    assert!((ratio - herald_eps / raw_eps).abs() < 0.01, "{r:?}");
}

#[test]
fn memory_run_prints_its_figures_and_the_in_process_floor() {
    let dir = tempfile::tempdir().unwrap();
    let r = result(&herald(
        dir.path(),
        &["bench", "--broker", "memory://", "--events", "2000"],
    ));
    assert_eq!(r["workload"], "w1");
    assert_eq!(r["transport"], "memory");
    assert_eq!(r["events"], "2000");
    positive(&r, "herald_eps");
    positive(&r, "raw_eps");
    positive(&r, "ratio");
}

/// The consumer runs in a child process sharing the broker file; the run only ends once the
/// child has handled every event.
#[test]
fn sqlite_run_shares_the_broker_with_a_consumer_process() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let r = result(&herald(
        dir.path(),
        &["bench", "--broker", &url, "--events", "500"],
    ));
    assert_eq!(r["transport"], "sqlite");
    assert_eq!(r["events"], "500");
    positive(&r, "herald_eps");
    positive(&r, "cpu_us_per_event");
}

#[test]
fn rabbitmq_run_with_the_raw_baseline_prints_the_ratio() {
    let dir = tempfile::tempdir().unwrap();
    let r = result(&herald(
        dir.path(),
        &["bench", "--broker", RABBITMQ, "--events", "2000", "--raw"],
    ));
    assert_eq!(r["transport"], "rabbitmq");
    assert_eq!(r["queue"], "classic");
    assert_ratio_of_the_rates(&r);
}

#[test]
fn rabbitmq_latency_run_prints_percentiles() {
    let dir = tempfile::tempdir().unwrap();
    let r = result(&herald(
        dir.path(),
        &[
            "bench",
            "--broker",
            RABBITMQ,
            "--latency",
            "--rate",
            "1000",
            "--events",
            "500",
        ],
    ));
    assert_eq!(r["workload"], "latency");
    let p50 = positive(&r, "p50_ms");
    let p99 = positive(&r, "p99_ms");
    assert!(p50 <= p99, "{r:?}");
}

#[test]
fn raw_on_a_broker_without_a_raw_client_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = herald(dir.path(), &["bench", "--broker", "memory://", "--raw"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("amqp://"), "{stderr}");
}

/// On NATS the raw baseline sends `Nats-Msg-Id` as Herald's publishes do (the server
/// de-duplicates both alike) unless `--raw-plain` says otherwise; the RESULT line names it.
#[test]
fn nats_run_against_raw_names_its_baseline() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, baseline) in [(None, "raw-msg-id"), (Some("--raw-plain"), "raw-plain")] {
        let mut args = vec![
            "bench",
            "--broker",
            "nats://127.0.0.1:4222",
            "--events",
            "2000",
            "--raw",
        ];
        args.extend(flag);
        let r = result(&herald(dir.path(), &args));
        assert_eq!(r["transport"], "nats");
        assert_eq!(r["baseline"], baseline, "{flag:?}");
        assert_ratio_of_the_rates(&r);
    }
}

#[test]
fn raw_plain_off_nats_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = herald(
        dir.path(),
        &["bench", "--broker", "memory://", "--raw", "--raw-plain"],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nats://"), "{stderr}");
}
