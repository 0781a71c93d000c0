//! `GET /api/sagas` over a real saga store: instances with state and age, stuck ones flagged.

use std::sync::Arc;
use std::time::Duration;

use herald::Event;
use herald_es::event_set;
use herald_es::saga::{Effects, Saga, SagaRunner};
use herald_es::sqlite::SqliteEventStore;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "ticket.opened")]
struct Opened {
    id: String,
}

event_set! {
    #[derive(Debug, Clone)]
    enum TicketEvent { Opened(Opened) }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Ticket {
    id: String,
}

impl Saga for Ticket {
    const NAME: &'static str = "ticket";
    type Event = TicketEvent;
    type Timeout = ();
    fn correlate(e: &TicketEvent) -> Option<String> {
        let TicketEvent::Opened(o) = e;
        Some(o.id.clone())
    }
    fn starts(_: &TicketEvent) -> bool {
        true
    }
    fn handle(&mut self, e: &TicketEvent, fx: &mut Effects<()>) {
        let TicketEvent::Opened(o) = e;
        self.id = o.id.clone();
        if o.id == "waits" {
            fx.schedule("reminder", Duration::from_secs(3600), ());
        }
    }
    fn on_timeout(&mut self, _: (), _: &mut Effects<()>) {}
    fn state_name(&self) -> String {
        "open".into()
    }
}

#[tokio::test]
async fn lists_saga_instances_and_flags_the_stuck_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteEventStore::open(dir.path().join("es.db"), "desk").unwrap());
    let runner = SagaRunner::<Ticket>::new(store.clone());
    for id in ["waits", "idle"] {
        let e = herald::Envelope::for_event(&Opened { id: id.into() }, "desk").unwrap();
        runner.handle(&e).await.unwrap();
    }
    let app = herald_http::serve::sagas::router(store);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let all: serde_json::Value = reqwest::get(format!("http://{addr}/api/sagas"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let instances = all["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 2, "{all}");
    assert_eq!(instances[0]["saga"], "ticket");
    assert_eq!(instances[0]["state_name"], "open");
    assert_eq!(instances[0]["status"], "active");
    assert!(instances[0]["age_secs"].as_f64().unwrap() >= 1.0, "{all}");

    // With a 1 s threshold, the one waiting on nothing is stuck; the one with a reminder is not.
    let stuck: serde_json::Value = reqwest::get(format!(
        "http://{addr}/api/sagas?stuck=true&stuck_after_secs=1"
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(stuck["stuck"], 1, "{stuck}");
    assert_eq!(stuck["instances"][0]["instance_id"], "idle", "{stuck}");
    assert!(stuck["instances"][0]["next_timeout_at"].is_null());
}
