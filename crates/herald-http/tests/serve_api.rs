//! The HTTP API of `herald serve` against a real server and a bus on a SQLite broker.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use herald_http::serve::{ServeConfig, Server};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

async fn post(http: &reqwest::Client, url: &str, body: &str) -> (u16, Value) {
    let r = http
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn publish_validates_routes_and_reports_errors_as_json() {
    let shop = Shop::start(None).await;
    let http = shop.http();

    let (code, body) = post(
        &http,
        &shop.url("/api/events/order.placed?correlation_id=flow-1"),
        r#"{"order": 7}"#,
    )
    .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["routing_key"], "order.placed");
    assert!(body["id"].as_str().is_some_and(|id| id.len() == 36));
    eventually(WAIT, "order 7 handled", || async {
        shop.handled().contains(&7).then_some(())
    })
    .await;

    let (code, body) = post(
        &http,
        &shop.url("/api/events/order.placed"),
        r#"{"order": "seven"}"#,
    )
    .await;
    assert_eq!(code, 422, "{body}");
    let details = body["details"].as_array().unwrap();
    assert!(
        details
            .iter()
            .any(|d| d.as_str().unwrap().contains("/order")),
        "{body}"
    );

    let (code, body) = post(
        &http,
        &shop.url("/api/events/nobody.listens"),
        r#"{"x": 1}"#,
    )
    .await;
    assert_eq!(code, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("nobody.listens"));

    let (code, body) = post(&http, &shop.url("/api/events/order.placed"), "{not json").await;
    assert_eq!(code, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("not valid JSON"));

    let big = format!(r#"{{"order": 1, "pad": "{}"}}"#, "x".repeat(20_000));
    let (code, body) = post(&http, &shop.url("/api/events/order.placed"), &big).await;
    assert_eq!(code, 413, "{body}");
    assert!(body["error"].is_string());

    let r = http
        .get(shop.url("/api/nothing-here"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());

    assert_eq!(shop.handled(), vec![7], "only the valid event was handled");
    shop.stop().await;
}

#[tokio::test]
async fn dead_letters_list_replay_and_purge() {
    let shop = Shop::start(None).await;
    let http = shop.http();
    for order in [1, 2, 3] {
        let (code, b) = post(
            &http,
            &shop.url("/api/events/order.placed"),
            &json!({"order": order, "poison": true}).to_string(),
        )
        .await;
        assert_eq!(code, 201, "{b}");
    }
    eventually(WAIT, "3 dead letters", || async {
        (dead_letter_count(&http, &shop).await == 3).then_some(())
    })
    .await;

    let list: Vec<Value> = http
        .get(shop.url(&format!("/api/dlq/{}?limit=10", shop.queue)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 3);
    let first = &list[0];
    assert_eq!(first["queue"], QUEUE);
    assert_eq!(first["type"], "order.placed");
    assert!(
        first["error"].as_str().unwrap().contains("is poison"),
        "{first}"
    );
    assert_eq!(first["error_kind"], "permanent");
    let ids: Vec<String> = list
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    let order_of = |d: &Value| d["data"]["order"].as_u64().unwrap();

    // Replay one, after the handler is fixed.
    shop.cure.store(true, std::sync::atomic::Ordering::SeqCst);
    let (code, b) = post(
        &http,
        &shop.url(&format!("/api/dlq/{}/replay", shop.queue)),
        &json!({"ids": [ids[0]]}).to_string(),
    )
    .await;
    assert_eq!((code, b), (200, json!({"replayed": 1})));
    let replayed = order_of(first);
    eventually(WAIT, "the replayed order handled", || async {
        shop.handled().contains(&replayed).then_some(())
    })
    .await;
    assert_eq!(dead_letter_count(&http, &shop).await, 2);

    // Purge one by id, then the rest.
    let (code, b) = post(
        &http,
        &shop.url(&format!("/api/dlq/{}/purge", shop.queue)),
        &json!({"ids": [ids[1]]}).to_string(),
    )
    .await;
    assert_eq!((code, b), (200, json!({"purged": 1})));
    let (code, b) = post(
        &http,
        &shop.url(&format!("/api/dlq/{}/purge", shop.queue)),
        r#"{}"#,
    )
    .await;
    assert_eq!(code, 400, "neither ids nor all: {b}");
    let (code, b) = post(
        &http,
        &shop.url(&format!("/api/dlq/{}/purge", shop.queue)),
        r#"{"all": true}"#,
    )
    .await;
    assert_eq!((code, b), (200, json!({"purged": 1})));
    assert_eq!(dead_letter_count(&http, &shop).await, 0);
    assert_eq!(
        shop.handled(),
        vec![replayed],
        "purged letters are never handled"
    );
    shop.stop().await;
}

#[tokio::test]
async fn token_guards_the_api_but_not_probes_or_the_page() {
    let shop = Shop::start(Some("s3cret")).await;
    let http = reqwest::Client::new();
    let status = |r: reqwest::Response| r.status().as_u16();
    // An unauthenticated GET's status code.
    let get = |path: &'static str| {
        let request = http.get(shop.url(path));
        async move { request.send().await.unwrap().status().as_u16() }
    };

    let r = http.get(shop.url("/api/info")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.json::<Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("missing token"));
    let r = http
        .get(shop.url("/api/info"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = http
        .post(shop.url("/api/events/order.placed"))
        .header("content-type", "application/json")
        .body(r#"{"order":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(status(r), 401, "publishing needs the token too");

    let info: Value = http
        .get(shop.url("/api/info"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["transport"], "sqlite");
    assert_eq!(info["exchange"], "herald.events");
    assert_eq!(info["service"], "herald-serve");

    assert_eq!(get("/health/ready").await, 200);
    assert_eq!(get("/health/live").await, 200);
    assert_eq!(get("/").await, 200);
    assert_eq!(get("/app.js").await, 200);
    // No route takes the token in its URL (browsers use the session cookie instead).
    assert_eq!(get("/api/stream?token=s3cret").await, 401);
    assert_eq!(get("/api/queues?token=s3cret").await, 401);
    shop.stop().await;
}

#[tokio::test]
async fn refuses_non_loopback_without_a_token() {
    let bus = herald::Bus::builder()
        .service("svc")
        .broker("memory://serve-refuse")
        .build()
        .await
        .unwrap();
    let err = Server::new(bus.clone(), ServeConfig::new("0.0.0.0:0".parse().unwrap()))
        .await
        .err()
        .expect("refused");
    assert!(matches!(
        err,
        herald_http::Error::NonLoopbackWithoutToken(_)
    ));
    assert!(err.to_string().contains("--token"), "{err}");

    let mut config = ServeConfig::new("0.0.0.0:0".parse().unwrap());
    config.token = Some("t".into());
    let server = Server::new(bus.clone(), config)
        .await
        .expect("with a token it binds");
    assert!(server.local_addr().ip().is_unspecified());
    drop(server);
    bus.shutdown().await.unwrap();
}

/// Read SSE `data:` lines until one arrives (or panic after 10 s).
async fn next_data(
    stream: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    buf: &mut String,
) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(i) = buf.find("\n\n") {
                let frame: String = buf.drain(..i + 2).collect();
                if let Some(line) = frame.lines().find_map(|l| l.strip_prefix("data:")) {
                    return serde_json::from_str(line.trim()).unwrap();
                }
                continue;
            }
            let chunk = stream.next().await.expect("stream open").unwrap();
            buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .expect("an SSE event within 10 s")
}

#[tokio::test]
async fn stream_sends_matching_events_only() {
    let shop = Shop::start(None).await;
    let http = shop.http();
    let r = http
        .get(shop.url("/api/stream?type=order.placed&correlation_id=flow-2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut stream = r.bytes_stream();
    let mut buf = String::new();

    for (order, flow) in [(1, "flow-1"), (2, "flow-2"), (3, "flow-1")] {
        let url = shop.url(&format!(
            "/api/events/order.placed?correlation_id={flow}&subject=o{order}"
        ));
        assert_eq!(
            post(&http, &url, &json!({"order": order}).to_string())
                .await
                .0,
            201
        );
    }
    let e = next_data(&mut stream, &mut buf).await;
    assert_eq!(e["type"], "order.placed");
    assert_eq!(e["correlation_id"], "flow-2");
    assert_eq!(e["subject"], "o2");
    assert_eq!(e["data"], json!({"order": 2}));
    assert_eq!(e["routing_key"], "order.placed");
    assert_eq!(e["source"], "billing");
    assert_eq!(e["attempt"], 1);
    for field in ["id", "time", "causation_id", "traceparent"] {
        assert!(e.get(field).is_some(), "EventView has {field}: {e}");
    }
    // Flow 1's events never came through; a later flow-2 event does.
    assert_eq!(
        post(
            &http,
            &shop.url("/api/events/order.placed?correlation_id=flow-2"),
            r#"{"order": 4}"#
        )
        .await
        .0,
        201
    );
    let e = next_data(&mut stream, &mut buf).await;
    assert_eq!(e["data"]["order"], 4);
    drop(stream);
    shop.stop().await;
}

/// A message that is not JSON (a foreign publisher's text) shows in the stream as a string:
/// the stream's subscription decodes nothing, so it neither drops nor dead-letters it.
#[tokio::test]
async fn stream_shows_bodies_that_are_not_json() {
    let shop = Shop::start(None).await;
    let http = shop.http();
    let r = http
        .get(shop.url("/api/stream?type=note.text"))
        .send()
        .await
        .unwrap();
    let mut stream = r.bytes_stream();
    let mut buf = String::new();
    let note = herald::Envelope::new(
        "note.text",
        1,
        "note.text",
        "notes",
        bytes::Bytes::from_static(b"plain text, \xff not JSON"),
    );
    shop.bus
        .publisher()
        .publish_envelopes(vec![note], false)
        .await
        .unwrap();
    let e = next_data(&mut stream, &mut buf).await;
    assert_eq!(e["type"], "note.text");
    assert_eq!(e["data"], "plain text, \u{fffd} not JSON");
    assert_eq!(shop.bus.metrics().dead_lettered, 0);
    drop(stream);
    shop.stop().await;
}

#[tokio::test]
async fn topology_queues_catalog_and_history() {
    let shop = Shop::start(None).await;
    let http = shop.http();
    let get = |path: &str| {
        let url = shop.url(path);
        let http = http.clone();
        async move {
            http.get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    assert_eq!(get("/api/catalog").await, catalog());

    let topo = get("/api/topology").await;
    assert_eq!(topo["exchange"], "herald.events");
    let queues = topo["queues"].as_array().unwrap();
    assert_eq!(queues.len(), 1, "the stream's own queue is hidden: {topo}");
    assert_eq!(queues[0]["name"], QUEUE);
    assert_eq!(queues[0]["bindings"], json!(["order.placed"]));
    assert_eq!(queues[0]["dead_letter_queue"], "billing.order.placed.dlq");
    assert_eq!(queues[0]["service"], "billing");

    let stats = get("/api/queues").await;
    assert!(
        stats
            .as_array()
            .unwrap()
            .iter()
            .all(|q| q["queue"] == QUEUE),
        "{stats}"
    );

    assert_eq!(
        post(
            &http,
            &shop.url("/api/events/order.placed"),
            r#"{"order": 9}"#
        )
        .await
        .0,
        201
    );
    let history = eventually(WAIT, "a sample counting order.placed", || async {
        let h = get("/api/stats/history").await;
        let counted = h["points"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["by_type"]["order.placed"].as_f64().unwrap_or(0.0) > 0.0);
        counted.then_some(h)
    })
    .await;
    assert_eq!(history["interval_ms"], 1000);
    let p = history["points"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert!(p["t"].is_string() && p["queues"][QUEUE].is_object(), "{p}");

    let r = http.get(shop.url("/api/outbox")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert!(r.json::<Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("--outbox-database"));
    shop.stop().await;
}

/// The same API on RabbitMQ: publish (the transport cannot list queues, so no 409 guess), the
/// stream through a temporary queue, dead letters replayed.
#[tokio::test]
async fn rabbitmq_publish_stream_and_replay() {
    herald_rabbitmq::register();
    let service = format!(
        "serve-rmq-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    let shop = Shop::start_on(
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        &service,
        None,
        None,
        tempfile::tempdir().unwrap(),
    )
    .await;
    let http = shop.http();
    let r = http
        .get(shop.url("/api/stream?type=order.placed"))
        .send()
        .await
        .unwrap();
    let mut stream = r.bytes_stream();
    let mut buf = String::new();
    let (code, b) = post(
        &http,
        &shop.url("/api/events/order.placed"),
        r#"{"order": 5}"#,
    )
    .await;
    assert_eq!(code, 201, "{b}");
    let e = next_data(&mut stream, &mut buf).await;
    assert_eq!(e["data"]["order"], 5);
    assert_eq!(e["source"], service.as_str());
    eventually(WAIT, "order 5 handled", || async {
        shop.handled().contains(&5).then_some(())
    })
    .await;

    let (code, _) = post(
        &http,
        &shop.url("/api/events/order.placed"),
        r#"{"order": 6, "poison": true}"#,
    )
    .await;
    assert_eq!(code, 201);
    eventually(WAIT, "the dead letter", || async {
        (dead_letter_count(&http, &shop).await == 1).then_some(())
    })
    .await;
    shop.cure.store(true, std::sync::atomic::Ordering::SeqCst);
    let url = shop.url(&format!("/api/dlq/{}/replay", shop.queue));
    assert_eq!(
        post(&http, &url, r#"{"all": true}"#).await,
        (200, json!({"replayed": 1}))
    );
    eventually(WAIT, "order 6 handled after replay", || async {
        shop.handled().contains(&6).then_some(())
    })
    .await;
    assert_eq!(dead_letter_count(&http, &shop).await, 0);
    drop(stream);
    shop.stop().await;
    // Durable queues (work, dead letters, retry levels) outlive the test; remove this run's.
    let listed = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "--no-table-headers", "name"])
        .output()
        .unwrap();
    // In parallel: each rabbitmqctl call starts an Erlang VM.
    let deleting: Vec<_> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|q| q.starts_with(&service))
        .filter_map(|q| {
            std::process::Command::new("rabbitmqctl")
                .args(["-q", "delete_queue", q])
                .stdout(std::process::Stdio::null())
                .spawn()
                .ok()
        })
        .collect();
    for mut d in deleting {
        let _ = d.wait();
    }
}

#[tokio::test]
async fn outbox_status_and_readiness_come_from_the_outbox_table() {
    use herald_outbox::health::RelayHealth;
    use herald_outbox::sqlite::SqliteOutbox;
    let dir = tempfile::tempdir().unwrap();
    let app_db = dir.path().join("app.db");
    let outbox = SqliteOutbox::new("app").unwrap();
    let db = rusqlite::Connection::open(&app_db).unwrap();
    outbox.migrate(&db).unwrap();
    let staged = herald::Envelope::new("order.placed", 1, "order.placed", "app", "{}".into());
    outbox.stage_envelope(&db, &staged).unwrap();

    let bus = herald::Bus::builder()
        .service("svc")
        .broker(format!("sqlite://{}", dir.path().join("b.db").display()))
        .build()
        .await
        .unwrap();
    let mut config = ServeConfig::new("127.0.0.1:0".parse().unwrap());
    config.outbox =
        Some(RelayHealth::sqlite(&app_db, outbox).threshold(Duration::from_millis(100)));
    let server = Server::new(bus.clone(), config).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let token = server.token().to_string();
    let cancel = tokio_util::sync::CancellationToken::new();
    let serving = tokio::spawn(server.serve(cancel.clone()));

    tokio::time::sleep(Duration::from_millis(150)).await;
    let status: Value = reqwest::Client::new()
        .get(format!("{base}/api/outbox"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["counts"]["pending"], 1, "{status}");
    assert!(status["oldest_pending_age_secs"].as_f64().unwrap() >= 0.1);
    assert_eq!(status["health"]["status"], "degraded", "{status}");

    let ready = reqwest::get(format!("{base}/health/ready")).await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let report: Value = ready.json().await.unwrap();
    assert_eq!(report["status"], "degraded", "{report}");
    let names: Vec<&str> = report["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["broker", "consumers", "outbox"]);

    cancel.cancel();
    serving.await.unwrap().unwrap();
    bus.shutdown().await.unwrap();
}
