//! The end state both listing-sync fault tests must reach, whatever the broker.

use herald_outbox::Status;
use tokio_postgres::Client;

use crate::app::App;

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
