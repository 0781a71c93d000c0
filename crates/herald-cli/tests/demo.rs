//! The README's claim about `herald demo --events N`, asserted as a user runs it: on the
//! embedded default (no `--broker`: `.herald/herald.db` in the working directory) and on
//! RabbitMQ, a run without faults ends with a RESULT line that says nothing was lost and nothing
//! was handled twice, every event handled or dead-lettered once by each consuming service, and
//! retries and dead letters that actually happened. (`tests/chaos.rs` kills the broker under
//! the demo; this is the plain run the quickstart shows.)

use std::collections::HashMap;
use std::process::Command;

mod common;
use common::{herald, result};

/// Enough events that the default failure rates (10% of first attempts, 1% always) show
/// retries and dead letters on any run (the chance of no poisoned event is 0.99^1000 < 1e-4),
/// few enough for a debug build in CI.
const EVENTS: u64 = 1000;

fn count(fields: &HashMap<String, String>, key: &str) -> u64 {
    fields[key]
        .parse()
        .unwrap_or_else(|_| panic!("{key}={} is not a count", fields[key]))
}

/// What the quickstart promises of a run without faults.
fn assert_the_demo_kept_its_promise(fields: &HashMap<String, String>) {
    let published = count(fields, "published");
    assert_eq!(published, EVENTS, "{fields:?}");
    assert_eq!(count(fields, "lost"), 0, "{fields:?}");
    assert_eq!(count(fields, "duplicates"), 0, "{fields:?}");
    // Two consuming services: each event handled or dead-lettered once per service.
    assert_eq!(
        count(fields, "handled") + count(fields, "dead_lettered"),
        2 * published,
        "{fields:?}"
    );
    assert!(count(fields, "retried") > 0, "no retries: {fields:?}");
    assert!(
        count(fields, "dead_lettered") > 0,
        "no dead letters: {fields:?}"
    );
    assert_eq!(fields["quiescent"], "yes", "{fields:?}");
}

#[test]
fn the_demo_on_the_embedded_default_loses_nothing_and_handles_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let events = EVENTS.to_string();
    let out = herald(
        dir.path(),
        &["demo", "--events", &events, "--no-serve", "--quiet"],
    );
    let fields = result(&out);
    println!("{}", String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        dir.path().join(".herald/herald.db").is_file(),
        "the default broker is the embedded one in .herald/herald.db"
    );
    assert_the_demo_kept_its_promise(&fields);
}

/// A virtual host of the test's own on the shared broker: the demo's queues have fixed names
/// (`<service>.<routing key>`), so a demo run by anyone else on `/` must not share them.
struct Vhost(String);

impl Vhost {
    fn create() -> Vhost {
        let name = format!("herald-demo-test-{:016x}", rand::random::<u64>());
        rabbitmqctl(&["add_vhost", &name]);
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        Vhost(name)
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:5672/{}", self.0)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        rabbitmqctl(&["delete_vhost", &self.0]);
    }
}

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("run rabbitmqctl (scripts/services.sh installs RabbitMQ)");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_demo_on_rabbitmq_loses_nothing_and_handles_each_event_once() {
    let vhost = Vhost::create();
    let dir = tempfile::tempdir().unwrap();
    let events = EVENTS.to_string();
    let out = herald(
        dir.path(),
        &[
            "demo",
            "--broker",
            &vhost.url(),
            "--events",
            &events,
            "--no-serve",
            "--quiet",
        ],
    );
    let fields = result(&out);
    println!("{}", String::from_utf8_lossy(&out.stdout).trim());
    assert_the_demo_kept_its_promise(&fields);
}
