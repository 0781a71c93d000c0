//! Sagas on PostgreSQL and SQLite: a transition's commands are staged in the outbox in the
//! transaction that saves its state (never before, never without it); redeliveries do nothing;
//! racing transitions are retried on the new state; compensations run newest first; timeouts fire
//! once; stuck instances are listed.

#[path = "support/booking.rs"]
mod booking;
mod common;

use std::sync::Arc;
use std::time::Duration;

use booking::*;
use common::*;
use herald_es::saga::{Handled, InstanceQuery, SagaRunner, SagaStatus};
use herald_es::{Database, Error};

/// The outbox rows staged for a booking, as routing keys in staging order.
async fn staged(db: &Database, booking: &str) -> Vec<String> {
    let subject = format!("booking:{booking}");
    match db {
        Database::Postgres(s) => pg_client()
            .await
            .query(
                &format!(
                    "SELECT routing_key FROM {} WHERE aggregate = $1 ORDER BY id",
                    s.outbox().qualified()
                ),
                &[&subject],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect(),
        Database::Sqlite(s) => {
            let c = rusqlite::Connection::open(s.path()).unwrap();
            let mut st = c
                .prepare("SELECT routing_key FROM herald_outbox WHERE aggregate = ?1 ORDER BY id")
                .unwrap();
            let keys = st
                .query_map([&subject], |r| r.get(0))
                .unwrap()
                .collect::<rusqlite::Result<Vec<String>>>()
                .unwrap();
            keys
        }
    }
}

fn runner(db: &Database) -> SagaRunner<Booking> {
    SagaRunner::<Booking>::new(db.sagas())
}

async fn instance(db: &Database, id: &str) -> herald_es::saga::SagaInstance {
    db.sagas()
        .load_instance("booking", id)
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn transitions_stage_their_commands_with_the_state_and_redeliveries_do_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (dbs, _g) = both("es_saga", &dir).await;
    for db in dbs {
        let kind = db.kind();
        let r = runner(&db);
        let request = envelope(&BookingRequested {
            booking_id: "b1".into(),
            deadline_ms: 60_000,
        });
        // A reply before its instance exists (the anchors' bug: the reply overtaking the saga
        // row) is refused, to be retried by the bus: it is not dropped.
        let early = r
            .handle(&envelope(&SeatReserved {
                booking_id: "b1".into(),
            }))
            .await;
        assert!(
            matches!(early, Err(Error::NoInstance { .. })),
            "{kind}: {early:?}"
        );

        assert_eq!(r.handle(&request).await.unwrap(), Handled::Transitioned);
        assert_eq!(
            r.handle(&request).await.unwrap(),
            Handled::Duplicate,
            "{kind}"
        );
        assert_eq!(staged(&db, "b1").await, vec!["seat.reserve"], "{kind}");
        let i = instance(&db, "b1").await;
        assert_eq!((i.state_name.as_str(), i.version), ("reserving", 1));
        // The commands carry the flow: correlation of the request, causation = the request.
        let reserved = envelope(&SeatReserved {
            booking_id: "b1".into(),
        });
        r.handle(&reserved).await.unwrap();
        r.handle(&reserved).await.unwrap();
        r.handle(&envelope(&PaymentDone {
            booking_id: "b1".into(),
        }))
        .await
        .unwrap();
        assert_eq!(
            staged(&db, "b1").await,
            vec!["seat.reserve", "card.charge"],
            "{kind}"
        );
        let i = instance(&db, "b1").await;
        assert_eq!((i.status, i.version), (SagaStatus::Completed, 3), "{kind}");
        // Finished: its deadline is gone.
        let listed = db
            .sagas()
            .instances(&InstanceQuery::default())
            .await
            .unwrap();
        assert_eq!(listed[0].next_timeout_at, None, "{kind}");
        assert!(!listed[0].stuck);
    }
}

/// A second start message (another id, so not a duplicate) for an instance that exists moves
/// that instance: the runner's first guess that a start event makes a new instance falls back
/// to loading it.
#[tokio::test]
async fn a_start_event_for_an_existing_instance_moves_that_instance() {
    let dir = tempfile::tempdir().unwrap();
    let (dbs, _g) = both("es_saga_start", &dir).await;
    for db in dbs {
        let kind = db.kind();
        let r = runner(&db);
        let start = || {
            envelope(&BookingRequested {
                booking_id: "b9".into(),
                deadline_ms: 60_000,
            })
        };
        assert_eq!(r.handle(&start()).await.unwrap(), Handled::Transitioned);
        assert_eq!(instance(&db, "b9").await.version, 1, "{kind}");
        assert_eq!(r.handle(&start()).await.unwrap(), Handled::Transitioned);
        let i = instance(&db, "b9").await;
        assert_eq!(
            (i.state_name.as_str(), i.version),
            ("reserving", 2),
            "{kind}"
        );
        assert_eq!(
            staged(&db, "b9").await,
            vec!["seat.reserve", "seat.reserve"],
            "{kind}"
        );
    }
}

#[tokio::test]
async fn staged_commands_carry_the_flows_correlation_and_causation() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir, herald_es::Upcasters::new());
    let db = Database::Sqlite(store.clone());
    let mut request = envelope(&BookingRequested {
        booking_id: "c1".into(),
        deadline_ms: 60_000,
    });
    request.correlation_id = Some("flow-7".into());
    runner(&db).handle(&request).await.unwrap();
    let c = rusqlite::Connection::open(store.path()).unwrap();
    let headers: String = c
        .query_row("SELECT headers FROM herald_outbox", [], |r| r.get(0))
        .unwrap();
    let h: serde_json::Value = serde_json::from_str(&headers).unwrap();
    assert_eq!(h["cloudEvents_correlationid"], "flow-7");
    assert_eq!(h["cloudEvents_causationid"], request.id.as_str());
    assert_eq!(h["cloudEvents_source"], "test-service");
}

#[tokio::test]
async fn racing_transitions_of_one_instance_are_retried_on_the_new_state() {
    let dir = tempfile::tempdir().unwrap();
    let (dbs, _g) = both("es_saga_race", &dir).await;
    for db in dbs {
        let r = Arc::new(runner(&db));
        r.handle(&envelope(&BookingRequested {
            booking_id: "r1".into(),
            deadline_ms: 60_000,
        }))
        .await
        .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..24 {
            let r = r.clone();
            tasks.push(tokio::spawn(async move {
                r.handle(&envelope(&Pinged {
                    booking_id: "r1".into(),
                }))
                .await
                .unwrap()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), Handled::Transitioned);
        }
        let i = instance(&db, "r1").await;
        let state: Booking = serde_json::from_str(&i.state).unwrap();
        assert_eq!((state.pings, i.version), (24, 25), "{}", db.kind());
    }
}

#[tokio::test]
async fn a_failed_payment_sends_the_remembered_compensations() {
    let dir = tempfile::tempdir().unwrap();
    let (dbs, _g) = both("es_saga_comp", &dir).await;
    for db in dbs {
        let r = runner(&db);
        let id = "p1".to_string();
        r.handle(&envelope(&BookingRequested {
            booking_id: id.clone(),
            deadline_ms: 60_000,
        }))
        .await
        .unwrap();
        r.handle(&envelope(&SeatReserved {
            booking_id: id.clone(),
        }))
        .await
        .unwrap();
        r.handle(&envelope(&PaymentFailed {
            booking_id: id.clone(),
        }))
        .await
        .unwrap();
        assert_eq!(
            staged(&db, &id).await,
            vec!["seat.reserve", "card.charge", "seat.release"],
            "{}",
            db.kind()
        );
        let i = instance(&db, &id).await;
        assert_eq!(
            (i.status, i.state_name.as_str()),
            (SagaStatus::Compensated, "compensated")
        );
        assert_eq!(i.compensations, "[]", "sent compensations are not kept");
    }
}

#[tokio::test]
async fn a_due_timeout_fires_once_and_a_cancelled_one_never() {
    let dir = tempfile::tempdir().unwrap();
    let (dbs, _g) = both("es_saga_timeout", &dir).await;
    for db in dbs {
        let kind = db.kind();
        let r = runner(&db);
        for (id, deadline) in [("t1", 1500), ("t2", 1500), ("t3", 60_000)] {
            r.handle(&envelope(&BookingRequested {
                booking_id: id.into(),
                deadline_ms: deadline,
            }))
            .await
            .unwrap();
        }
        // t2 is paid in time: its deadline is dropped with the transition.
        for e in [
            envelope(&SeatReserved {
                booking_id: "t2".into(),
            }),
            envelope(&PaymentDone {
                booking_id: "t2".into(),
            }),
        ] {
            r.handle(&e).await.unwrap();
        }
        assert_eq!(
            r.fire_due_timeouts().await.unwrap(),
            0,
            "{kind}: nothing due yet"
        );
        tokio::time::sleep(Duration::from_millis(1700)).await;
        // Two runners racing for the same due timeout: it fires once.
        let other = runner(&db);
        let (a, b) = tokio::join!(r.fire_due_timeouts(), other.fire_due_timeouts());
        assert_eq!(a.unwrap() + b.unwrap(), 1, "{kind}");
        assert_eq!(r.fire_due_timeouts().await.unwrap(), 0, "{kind}");
        assert_eq!(
            staged(&db, "t1").await,
            vec!["seat.reserve", "booking.timed_out"],
            "{kind}"
        );
        let t1: Booking = serde_json::from_str(&instance(&db, "t1").await.state).unwrap();
        assert_eq!(t1.timeouts, 1);
        assert_eq!(instance(&db, "t2").await.status, SagaStatus::Completed);
        assert_eq!(instance(&db, "t3").await.status, SagaStatus::Active);
    }
}

#[tokio::test]
async fn instances_waiting_on_nothing_are_listed_as_stuck() {
    let dir = tempfile::tempdir().unwrap();
    let (dbs, _g) = both("es_saga_stuck", &dir).await;
    for db in dbs {
        let r = runner(&db);
        for id in ["waiting", "stuck", "done"] {
            r.handle(&envelope(&BookingRequested {
                booking_id: id.into(),
                deadline_ms: 60_000,
            }))
            .await
            .unwrap();
        }
        // "stuck" loses its deadline and is then left alone; "done" finishes.
        r.handle(&envelope(&Pinged {
            booking_id: "stuck".into(),
        }))
        .await
        .unwrap();
        r.handle(&envelope(&SeatReserved {
            booking_id: "done".into(),
        }))
        .await
        .unwrap();
        r.handle(&envelope(&PaymentDone {
            booking_id: "done".into(),
        }))
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let query = InstanceQuery {
            stuck_only: true,
            stuck_after: Duration::from_millis(200),
            ..InstanceQuery::default()
        };
        let stuck = db.sagas().instances(&query).await.unwrap();
        let ids: Vec<&str> = stuck.iter().map(|i| i.instance_id.as_str()).collect();
        assert_eq!(ids, vec!["stuck"], "{}", db.kind());
        assert_eq!(stuck[0].state_name, "reserving");
        assert!(stuck[0].age_secs >= 0.2 && stuck[0].idle_secs >= 0.2);
        let all = db
            .sagas()
            .instances(&InstanceQuery {
                saga: Some("booking".into()),
                ..query.clone()
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 1);
        let everything = db
            .sagas()
            .instances(&InstanceQuery::default())
            .await
            .unwrap();
        assert_eq!(everything.len(), 3);
    }
}
