//! One-shot commands as a user runs them: they give up on a broker that is down within a few
//! seconds (configurable) instead of a transport's 30 s, take named priority levels, and on
//! RabbitMQ (which cannot list queues) count the queues they can know.

mod common;

use std::time::{Duration, Instant};

use common::herald;

/// Nothing listens here: connections are refused at once, and the transport keeps retrying.
const DOWN: &str = "amqp://guest:guest@127.0.0.1:5998/%2f";
const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[test]
fn one_shot_commands_fail_within_seconds_on_a_broker_that_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let commands: [&[&str]; 3] = [
        &["publish", "a.b", "{}"],
        &["dlq", "list"],
        &["topology", "--live"],
    ];
    for args in commands {
        let started = Instant::now();
        let mut all = vec!["--broker", DOWN];
        all.extend_from_slice(args);
        let out = herald(dir.path(), &all);
        let took = started.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            took < Duration::from_secs(10),
            "{args:?} took {took:?} (the default limit is 5 s)"
        );
        assert!(
            err.contains("unreachable") && err.contains("connect_timeout_ms"),
            "{args:?}: {err}"
        );
    }
    // Configurable: a second here.
    let started = Instant::now();
    let out = herald(
        dir.path(),
        &["--broker", DOWN, "--connect-timeout", "1", "dlq", "list"],
    );
    assert!(!out.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let out = herald(
        dir.path(),
        &["--broker", DOWN, "--connect-timeout", "0", "dlq", "list"],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--connect-timeout must be a positive"));
}

#[test]
fn publish_takes_a_named_priority_level() {
    let dir = tempfile::tempdir().unwrap();
    let broker = format!("sqlite://{}", dir.path().join("b.db").display());
    let ok = herald(
        dir.path(),
        &[
            "--broker",
            &broker,
            "publish",
            "a.b",
            "{}",
            "--priority",
            "high",
            "--allow-unroutable",
        ],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = herald(
        dir.path(),
        &[
            "--broker",
            &broker,
            "publish",
            "a.b",
            "{}",
            "--priority",
            "urgent",
        ],
    );
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("low, normal, high or critical"), "{err}");
}

#[test]
fn dlq_list_on_rabbitmq_counts_the_queues_it_can_know() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    herald_rabbitmq::register();
    let service = format!("cli-dlq-{:08x}", rand::random::<u32>());
    let exchange = format!("cli.dlq.{service}");
    // A service's queue with one dead letter.
    let (bus, queue) = runtime.block_on(async {
        let bus = herald::Bus::builder()
            .service(&service)
            .exchange(&exchange)
            .broker(AMQP)
            .build()
            .await
            .unwrap();
        bus.subscribe_pattern(
            "orders",
            "order.#",
            |_: serde_json::Value| async {
                Err::<(), _>(herald::HandlerError::permanent("refused"))
            },
            herald::SubscribeOptions::new().retry(herald::middleware::RetryPolicy::none()),
        )
        .unwrap();
        bus.start().await.unwrap();
        let e = herald::Envelope::new("order.placed", 1, "order.placed", "t", "{}".into());
        bus.publisher()
            .publish_envelopes(vec![e], false)
            .await
            .unwrap();
        while bus.metrics().dead_lettered == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (bus, format!("{service}.orders"))
    });
    let out = herald(
        dir.path(),
        &[
            "--broker",
            AMQP,
            "dlq",
            "list",
            "--queue",
            &queue,
            "--queue",
            "no-such-service.nothing",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.starts_with(&queue))
        .unwrap_or_else(|| panic!("{queue} listed: {text}"));
    assert_eq!(
        line.split_whitespace().last(),
        Some("1"),
        "one dead letter: {line}"
    );
    assert!(
        !text.contains("no-such-service"),
        "a queue that does not exist is left out"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("RabbitMQ does not list queues"));
    runtime.block_on(async {
        let topologies = bus.topologies();
        bus.shutdown().await.unwrap();
        let t = herald::transport::connect(AMQP, "cleanup").await.unwrap();
        for topology in &topologies {
            t.topology_admin()
                .unwrap()
                .delete_topology(topology)
                .await
                .unwrap();
        }
        t.close().await.unwrap();
    });
}
