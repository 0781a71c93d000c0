//! What a subscription's consumer can do beyond one message at a time, through a real bus on
//! the embedded transports: queues named by the user on exchanges of their choosing with several
//! binding keys, order per key with parallelism across keys, and batch handlers settled per
//! message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald::handler::BatchResult;
use herald::middleware::RetryPolicy;
use herald::transport::dead_letter_admin;
use herald::{
    BatchOptions, Bus, ConsumerOptions, Event, HandlerError, MessageOptions, QueueOptions,
    SubscribeOptions,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "listing.status.active")]
struct ListingActivated {
    id: u64,
    seq: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "health.reported", exchange = "shapes.system")]
struct HealthReported {
    component: String,
}

fn brokers() -> Vec<(String, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("b.db").display());
    vec![
        (
            format!("memory://consumers-{}", uuid::Uuid::new_v4().simple()),
            None,
        ),
        (sqlite, Some(dir)),
    ]
}

async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_queues_on_several_exchanges_with_several_keys() {
    for (broker, _dir) in brokers() {
        let bus = Bus::builder()
            .broker(&broker)
            .service("sync")
            .exchange("shapes.listings")
            .build()
            .await
            .unwrap();
        let seen: Arc<Mutex<HashMap<&'static str, Vec<String>>>> = Arc::default();
        let record = |queue: &'static str| {
            let seen = seen.clone();
            move |_: Value, ctx: herald::Context| {
                seen.lock()
                    .unwrap()
                    .entry(queue)
                    .or_default()
                    .push(ctx.envelope().routing_key.clone());
                async {}
            }
        };
        bus.subscribe_pattern(
            "unused-suffix",
            "listing.#",
            record("search"),
            SubscribeOptions::new().queue(QueueOptions::named("shapes.search.sync")),
        )
        .unwrap();
        // One queue, two binding keys, replacing the pattern's own.
        bus.subscribe_pattern(
            "changes",
            "listing.status.#",
            record("changes"),
            SubscribeOptions::new().queue(
                QueueOptions::named("shapes.changes")
                    .bind("listing.status.#")
                    .bind("listing.delete"),
            ),
        )
        .unwrap();
        bus.subscribe_pattern(
            "health",
            "health.#",
            record("health"),
            SubscribeOptions::new()
                .queue(QueueOptions::named("shapes.system.health").exchange("shapes.system")),
        )
        .unwrap();
        bus.start().await.unwrap();
        let topologies = bus.topologies();
        assert_eq!(
            topologies
                .iter()
                .map(|t| (t.exchange.as_str(), t.queues.len()))
                .collect::<Vec<_>>(),
            vec![("shapes.listings", 2), ("shapes.system", 1)]
        );
        assert_eq!(
            topologies[0].queues[1].bindings,
            vec!["listing.status.#", "listing.delete"]
        );
        bus.publish(&ListingActivated { id: 1, seq: 0 })
            .await
            .unwrap();
        // The event's own exchange, declared by the bus before its first publish.
        bus.publish(&HealthReported {
            component: "search".into(),
        })
        .await
        .unwrap();
        // A message option sends it elsewhere: to the listings exchange nobody binds it on.
        let err = bus
            .publish_with(
                &HealthReported {
                    component: "x".into(),
                },
                MessageOptions::default().exchange("shapes.listings"),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, herald::Error::Unroutable { .. }), "{err}");
        let mut delete = herald::Envelope::new(
            "listing.delete",
            1,
            "listing.delete",
            "admin",
            bytes::Bytes::from_static(b"{}"),
        );
        delete.subject = Some("1".into());
        bus.publisher()
            .publish_envelopes(vec![delete], false)
            .await
            .unwrap();
        wait_until("every queue got its messages", || {
            let s = seen.lock().unwrap();
            s.get("search").map_or(0, Vec::len) == 2
                && s.get("changes").map_or(0, Vec::len) == 2
                && s.get("health").map_or(0, Vec::len) == 1
        })
        .await;
        let s = seen.lock().unwrap().clone();
        assert_eq!(s["health"], vec!["health.reported"], "{broker}");
        let mut changes = s["changes"].clone();
        changes.sort();
        assert_eq!(changes, vec!["listing.delete", "listing.status.active"]);
        bus.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_by_subject_keeps_each_listing_in_order_and_runs_listings_in_parallel() {
    for (broker, _dir) in brokers() {
        let bus = Bus::builder()
            .broker(&broker)
            .service("ordered")
            .build()
            .await
            .unwrap();
        let seen: Arc<Mutex<HashMap<u64, Vec<u32>>>> = Arc::default();
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (s, r, p) = (seen.clone(), running.clone(), peak.clone());
        bus.subscribe_with(
            move |e: ListingActivated| {
                let (s, r, p) = (s.clone(), r.clone(), p.clone());
                async move {
                    let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(now, Ordering::SeqCst);
                    // Later events of a listing are quicker: without ordering they overtake.
                    let pause = 12u64.saturating_sub(u64::from(e.seq) * 3);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    s.lock().unwrap().entry(e.id).or_default().push(e.seq);
                    r.fetch_sub(1, Ordering::SeqCst);
                }
            },
            SubscribeOptions::new().consumer(
                ConsumerOptions::new()
                    .concurrency(8)
                    .prefetch(64)
                    .ordered_by_subject(),
            ),
        )
        .unwrap();
        bus.start().await.unwrap();
        for seq in 0..4 {
            for id in 0..6u64 {
                bus.publish_with(
                    &ListingActivated { id, seq },
                    MessageOptions::default().subject(id.to_string()),
                )
                .await
                .unwrap();
            }
        }
        wait_until("24 events handled", || bus.metrics().handled == 24).await;
        for (id, seqs) in seen.lock().unwrap().iter() {
            assert_eq!(seqs, &vec![0, 1, 2, 3], "listing {id} in order on {broker}");
        }
        assert!(
            peak.load(Ordering::SeqCst) > 1,
            "different listings ran at the same time"
        );
        bus.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_handlers_get_bounded_batches_and_each_message_is_settled_alone() {
    for (broker, _dir) in brokers() {
        let bus = Bus::builder()
            .broker(&broker)
            .service("batches")
            .build()
            .await
            .unwrap();
        let sizes: Arc<Mutex<Vec<usize>>> = Arc::default();
        let calls_of_7 = Arc::new(AtomicU32::new(0));
        let (sz, c7) = (sizes.clone(), calls_of_7.clone());
        bus.subscribe_batch(
            move |events: Vec<ListingActivated>| {
                sz.lock().unwrap().push(events.len());
                // Listing 7 never indexes; the others do.
                let mut result = BatchResult::ok();
                for (i, e) in events.iter().enumerate() {
                    if e.id == 7 {
                        c7.fetch_add(1, Ordering::SeqCst);
                        result = result.fail(i, HandlerError::transient("listing 7 is broken"));
                    }
                }
                async move { result }
            },
            BatchOptions::new(10, Duration::from_millis(200)),
            SubscribeOptions::new().retry(RetryPolicy {
                immediate: 0,
                jitter: 0.0,
                ..RetryPolicy::fixed(3, Duration::from_millis(20))
            }),
        )
        .unwrap();
        bus.start().await.unwrap();
        let events: Vec<ListingActivated> =
            (0..25).map(|id| ListingActivated { id, seq: 0 }).collect();
        bus.publish_batch(&events).await.unwrap();
        wait_until("24 acked, one dead-lettered", || {
            let m = bus.metrics();
            m.handled == 24 && m.dead_lettered == 1
        })
        .await;
        let sizes = sizes.lock().unwrap().clone();
        assert!(sizes.iter().all(|&n| n <= 10), "{sizes:?}");
        assert!(
            sizes.iter().any(|&n| n > 1),
            "messages were batched: {sizes:?}"
        );
        assert_eq!(
            calls_of_7.load(Ordering::SeqCst),
            3,
            "3 deliveries of the bad one"
        );
        let m = bus.metrics();
        assert_eq!(
            (m.retried, m.handled),
            (2, 24),
            "only the bad one was retried"
        );
        let dead = dead_letter_admin(&**bus.transport())
            .unwrap()
            .dead_letters("batches.listing.status.active", 10)
            .await
            .unwrap();
        assert_eq!(dead.len(), 1);
        assert!(
            dead[0].error().contains("listing 7 is broken"),
            "{}",
            dead[0].error()
        );
        // A lone message is not held longer than the wait bound.
        let started = Instant::now();
        bus.publish(&ListingActivated { id: 100, seq: 0 })
            .await
            .unwrap();
        wait_until("the lone one handled", || bus.metrics().handled == 25).await;
        assert!(started.elapsed() < Duration::from_secs(2));
        bus.shutdown().await.unwrap();
    }
}
