//! The end state both listing-sync fault tests must reach, whatever the broker.

use herald::Bus;
use herald_outbox::Status;
use tokio_postgres::Client;

use crate::app::{App, Names};

/// (queue, its binding keys).
type Bound = (String, Vec<String>);

/// The bus declares reference 001's exchanges and queues, bound as the reference binds them.
pub fn assert_reference_topology(bus: &Bus, names: &Names) {
    let t = bus.topologies();
    let shape: Vec<(String, Vec<Bound>)> = t
        .iter()
        .map(|t| {
            (
                t.exchange.clone(),
                t.queues
                    .iter()
                    .map(|q| (q.name.clone(), q.bindings.clone()))
                    .collect(),
            )
        })
        .collect();
    let one = |name: &str, key: &str| (name.to_string(), vec![key.to_string()]);
    assert_eq!(
        shape,
        vec![
            (
                names.listings.clone(),
                vec![
                    one(&names.search_queue, "listing.#"),
                    one(&names.status_queue, "listing.status.#"),
                ]
            ),
            (
                names.system.clone(),
                vec![one(&names.health_queue, "health.#")]
            ),
        ]
    );
}

/// The `system.health` consumer logged a health report of each of `components`.
pub async fn assert_health_logged(app: &App, db: &Client, components: &[&str]) {
    let start = std::time::Instant::now();
    loop {
        let rows = db
            .query(
                &format!("SELECT DISTINCT component FROM {}.health_log", app.schema),
                &[],
            )
            .await
            .unwrap();
        let logged: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        if components.iter().all(|c| logged.iter().any(|l| l == c)) {
            return;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "health reports logged: {logged:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The search index matches the table (`zeppelin` is the one listing named so), the status
/// consumer saw each of `status_changes` once, every outbox job was completed, and the inbox
/// holds one record per event (redeliveries absorbed).
pub async fn assert_in_sync(app: &App, db: &Client, zeppelin: i64, status_changes: usize) {
    let schema = &app.schema;
    assert_eq!(app.search(db, "zeppelin").await.unwrap(), vec![zeppelin]);
    let bikes = app.search(db, "bicycles").await.unwrap();
    let live: i64 = db
        .query_one(&format!("SELECT count(*) FROM {schema}.listings"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        bikes.len() as i64,
        live - 1,
        "stemmed full-text search finds every bicycle"
    );

    let logged = db
        .query(&format!("SELECT routing_key FROM {schema}.status_log"), &[])
        .await
        .unwrap();
    assert_eq!(
        logged.len(),
        status_changes,
        "the status consumer saw each status change once"
    );
    assert!(logged
        .iter()
        .all(|r| r.get::<_, String>(0).starts_with("listing.status.")));

    let status = app.outbox.status(db).await.unwrap();
    let total: u64 = status.counts.values().sum();
    assert_eq!(
        status.count(Status::Completed),
        total,
        "every job completed by the search sync: {status}"
    );
    let inbox: i64 = db
        .query_one(
            &format!("SELECT count(*) FROM {schema}.herald_inbox WHERE consumer = 'search-sync'"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        inbox as u64, total,
        "one inbox record per event, duplicates absorbed"
    );
}
