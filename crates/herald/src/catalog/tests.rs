use serde::{Deserialize, Serialize};
use serde_json::json;

use super::*;

/// A learner enrolled in a course.
#[derive(Serialize, Deserialize)]
struct Enrolled {
    enrollment_id: u64,
}

impl Event for Enrolled {
    const NAME: &'static str = "course.enrolled";
    const VERSION: u32 = 2;
    const ROUTING_KEY: &'static str = "course.enrolled.v2";

    fn descriptor() -> crate::EventDescriptor {
        crate::EventDescriptor {
            name: Self::NAME,
            version: Self::VERSION,
            routing_key: Self::ROUTING_KEY,
            type_name: "Enrolled",
            publisher: Some("course-service"),
            consumers: &["notification-service", "mailer"],
            description: "A learner <enrolled> & \"paid\".",
        }
    }

    fn event_schema() -> Option<Value> {
        Some(json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "title": "Enrolled",
            "type": "object",
            "required": ["enrollment_id", "level"],
            "properties": {
                "enrollment_id": {"type": "integer", "format": "uint64", "minimum": 0.0},
                "level": {"$ref": "#/definitions/Level"},
            },
            "definitions": {"Level": {"type": "string", "enum": ["beginner", "expert"]}},
        }))
    }
}

fn services(catalog: &Catalog) -> Vec<(String, String)> {
    catalog.events[0]
        .consumers
        .iter()
        .map(|c| (c.service.clone(), c.queue.clone()))
        .collect()
}

fn topology(queues: &[(&str, &str)]) -> Topology {
    let mut t = Topology::new("herald.events");
    for (name, binding) in queues {
        t.add_queue(QueueSpec::new(*name, *binding));
    }
    t
}

#[test]
fn declared_consumers_get_the_default_queue_name() {
    let catalog = Catalog::new("herald.events").event::<Enrolled>();
    assert_eq!(
        services(&catalog),
        vec![
            (
                "notification-service".into(),
                "notification-service.course.enrolled.v2".into()
            ),
            ("mailer".into(), "mailer.course.enrolled.v2".into()),
        ]
    );
}

#[test]
fn topology_patterns_add_consumers_that_match_the_routing_key() {
    let t = topology(&[
        ("audit.#", "#"),                               // everything
        ("analytics-service.course.*.*", "course.*.*"), // course.enrolled.v2 has three words
        ("search.course.*", "course.*"),                // one word only: no match
        ("billing.course.enrolled.v2", "course.enrolled.v2"),
        ("legacy-courses", "course.#"), // not named <service>.<binding>
    ]);
    let catalog = Catalog::new("herald.events")
        .event::<Enrolled>()
        .with_topology(&t);
    let got = services(&catalog);
    let want: Vec<(String, String)> = [
        (
            "notification-service",
            "notification-service.course.enrolled.v2",
        ),
        ("mailer", "mailer.course.enrolled.v2"),
        ("audit", "audit.#"),
        ("analytics-service", "analytics-service.course.*.*"),
        ("billing", "billing.course.enrolled.v2"),
        ("legacy-courses", "legacy-courses"),
    ]
    .iter()
    .map(|(s, q)| (s.to_string(), q.to_string()))
    .collect();
    assert_eq!(got, want);
}

#[test]
fn a_topology_queue_replaces_the_declared_guess_and_order_does_not_matter() {
    // notification-service subscribes under a custom queue name.
    let t = topology(&[("notification-service.all-courses", "course.#")]);
    let before = Catalog::new("ex").with_topology(&t).event::<Enrolled>();
    let after = Catalog::new("ex").event::<Enrolled>().with_topology(&t);
    for catalog in [before, after] {
        assert_eq!(
            services(&catalog),
            vec![
                ("mailer".into(), "mailer.course.enrolled.v2".into()),
                (
                    "notification-service".into(),
                    "notification-service.all-courses".into()
                ),
            ]
        );
    }
}

#[test]
fn temporary_queues_are_not_consumers() {
    let mut t = Topology::new("ex");
    let mut tail = QueueSpec::new("herald-cli.tail.1234", "#");
    tail.auto_delete = true;
    t.add_queue(tail);
    let catalog = Catalog::new("ex").event::<Enrolled>().with_topology(&t);
    assert!(services(&catalog).iter().all(|(s, _)| s != "herald-cli"));
}

#[test]
fn publishers_and_examples_can_be_added() {
    let catalog = Catalog::new("ex")
        .publisher::<Enrolled>("backfill-job")
        .publisher::<Enrolled>("backfill-job")
        .example(&Enrolled { enrollment_id: 7 });
    let e = &catalog.events[0];
    assert_eq!(e.publishers, vec!["course-service", "backfill-job"]);
    assert_eq!(e.example, Some(json!({"enrollment_id": 7})));
}

#[test]
fn the_generated_example_follows_refs_and_enums() {
    let catalog = Catalog::new("ex").event::<Enrolled>();
    assert_eq!(
        catalog.events[0].example,
        Some(json!({"enrollment_id": 1, "level": "beginner"}))
    );
}

#[test]
fn example_generation_covers_the_schemars_shapes() {
    let schema = json!({
        "type": "object",
        "properties": {
            "at": {"type": "string", "format": "date-time"},
            "day": {"type": "string", "format": "date"},
            "name": {"type": "string"},
            "maybe": {"type": ["integer", "null"], "format": "int32"},
            "rating": {"type": "integer", "minimum": 3, "maximum": 5},
            "ratio": {"type": "number", "maximum": 1.0},
            "ok": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "pair": {"type": "array", "items": [{"type": "integer"}, {"type": "boolean"}]},
            "nested": {"anyOf": [{"$ref": "#/definitions/Inner"}, {"type": "null"}]},
            "both": {"allOf": [{"$ref": "#/definitions/Inner"}, {"properties": {"x": {"const": 9}}}]},
            "kind": {"oneOf": [{"type": "string", "enum": ["a"]}, {"type": "string", "enum": ["b"]}]},
            "given": {"type": "string", "examples": ["from the schema"]},
            "node": {"$ref": "#/definitions/Node"},
        },
        "definitions": {
            "Inner": {"type": "object", "properties": {"id": {"type": "string", "format": "uuid"}}},
            "Node": {"type": "object", "properties": {"next": {"$ref": "#/definitions/Node"}}},
        }
    });
    let ex = example_from_schema(&schema);
    assert_eq!(ex["at"], "2024-01-15T10:35:00Z");
    assert!(chrono::DateTime::parse_from_rfc3339(ex["at"].as_str().unwrap()).is_ok());
    assert_eq!(ex["day"], "2024-01-15");
    assert_eq!(ex["name"], "string");
    assert_eq!(ex["maybe"], 1);
    assert_eq!(ex["rating"], 3);
    assert_eq!(ex["ratio"], 1.0);
    assert_eq!(ex["ok"], true);
    assert_eq!(ex["tags"], json!(["string"]));
    assert_eq!(ex["pair"], json!([1, true]));
    assert_eq!(
        ex["nested"],
        json!({"id": "0190d6a0-5c1e-7b1a-9f3e-2a4b6c8d0e1f"})
    );
    assert_eq!(
        ex["both"],
        json!({"id": "0190d6a0-5c1e-7b1a-9f3e-2a4b6c8d0e1f", "x": 9})
    );
    assert_eq!(ex["kind"], "a");
    assert_eq!(ex["given"], "from the schema");
    // A recursive type ends in null instead of recursing forever.
    let mut node = &ex["node"];
    let mut depth = 0;
    while node.is_object() {
        node = &node["next"];
        depth += 1;
    }
    assert!(node.is_null() && depth > 1, "{ex}");
    // A dangling reference gives null rather than a panic.
    assert_eq!(
        example_from_schema(&json!({"$ref": "#/definitions/Missing"})),
        Value::Null
    );
}

#[test]
fn html_escapes_every_text_it_shows() {
    let mut catalog = Catalog::new("ex<script>").event::<Enrolled>();
    catalog.events[0].example = Some(json!({"note": "</pre><script>alert(1)</script>"}));
    let html = catalog.to_html();
    assert!(!html.contains("<script>alert"), "{html}");
    assert!(!html.contains("<enrolled>"));
    assert!(html.contains("A learner &lt;enrolled&gt; &amp; &quot;paid&quot;."));
    assert!(html.contains("&lt;/pre&gt;&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(html.contains("ex&lt;script&gt;"));
    // The only script is the search box's.
    assert_eq!(html.matches("<script>").count(), 1);
    assert!(html.contains("id=\"search\""));
    // Search covers services, queues and field names.
    let search = html
        .split("data-search=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap();
    for word in [
        "course-service",
        "mailer.course.enrolled.v2",
        "enrollment_id",
        "level",
    ] {
        assert!(search.contains(word), "{word} not searchable: {search}");
    }
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));
    assert_eq!(html::escape("a'b"), "a&#39;b");
}

#[test]
fn json_round_trips_and_fills_missing_examples() {
    let catalog = Catalog::new("herald.events").event::<Enrolled>();
    let mut json = catalog.to_json();
    assert_eq!(json["exchange"], "herald.events");
    let e = &json["events"][0];
    for key in [
        "name",
        "version",
        "routing_key",
        "type_name",
        "description",
        "publishers",
        "consumers",
        "schema",
        "example",
    ] {
        assert!(e.get(key).is_some(), "missing {key}: {e}");
    }
    assert_eq!(
        e["consumers"][0],
        json!({"service": "notification-service", "queue": "notification-service.course.enrolled.v2"})
    );
    json["events"][0]["example"] = Value::Null;
    let back = Catalog::from_json(&json.to_string()).unwrap();
    assert_eq!(back.events, catalog.events);
    let err = Catalog::from_json("{\"events\": 3}").unwrap_err();
    assert!(
        err.to_string().contains("herald docs --format json"),
        "{err}"
    );
}

#[test]
fn asyncapi_servers_follow_the_broker() {
    let catalog = Catalog::new("ex")
        .event::<Enrolled>()
        .broker("amqps://user:secret@rabbit-1:5671/a%2Fb+c,amqp://user:secret@rabbit-2/%2f")
        .unwrap();
    let doc = catalog.to_asyncapi();
    assert_eq!(doc["servers"]["broker-1"]["host"], "rabbit-1:5671");
    assert_eq!(doc["servers"]["broker-1"]["protocol"], "amqps");
    assert_eq!(doc["servers"]["broker-1"]["pathname"], "/a%2Fb+c");
    assert_eq!(
        doc["servers"]["broker-1"]["description"],
        "RabbitMQ, virtual host `a/b+c`"
    );
    assert_eq!(doc["servers"]["broker-2"]["host"], "rabbit-2:5672");
    assert_eq!(doc["servers"]["broker-2"]["pathname"], "/%2f");
    assert_eq!(
        doc["servers"]["broker-2"]["description"],
        "RabbitMQ, virtual host `/`"
    );
    assert!(!doc.to_string().contains("secret"));

    let embedded = Catalog::new("ex")
        .broker("sqlite://.herald/herald.db")
        .unwrap();
    let doc = embedded.to_asyncapi();
    assert!(doc.get("servers").is_none());
    assert_eq!(doc["x-herald-broker"], "sqlite://.herald/herald.db");
    assert!(Catalog::new("ex").broker("ftp://nope").is_err());
}

#[test]
fn asyncapi_links_publishers_and_consumers_to_channels() {
    let doc = Catalog::new("herald.events")
        .event::<Enrolled>()
        .to_asyncapi();
    let channel = &doc["channels"]["course.enrolled.v2"];
    assert_eq!(channel["address"], "course.enrolled.v2");
    assert_eq!(channel["bindings"]["amqp"]["exchange"]["type"], "topic");
    let send = &doc["operations"]["course-service.send.course.enrolled.v2"];
    assert_eq!(send["action"], "send");
    assert_eq!(send["channel"]["$ref"], "#/channels/course.enrolled.v2");
    let receive = &doc["operations"]["mailer.receive.course.enrolled.v2"];
    assert_eq!(receive["action"], "receive");
    assert_eq!(
        receive["channel"]["$ref"],
        "#/channels/mailer.course.enrolled.v2"
    );
    let message = &doc["components"]["messages"]["course.enrolled.v2"];
    assert_eq!(message["contentType"], "application/json");
    // schemars' definitions moved where the payload's $ref can reach them.
    assert_eq!(
        message["payload"]["properties"]["level"]["$ref"],
        "#/components/schemas/Level"
    );
    assert_eq!(
        doc["components"]["schemas"]["Level"]["enum"],
        json!(["beginner", "expert"])
    );
    assert_eq!(
        message["headers"]["properties"]["cloudEvents_type"]["const"],
        "course.enrolled"
    );
}

#[test]
fn markdown_lists_every_event() {
    let md = Catalog::new("ex").event::<Enrolled>().to_markdown();
    assert!(md.contains("## course.enrolled v2"), "{md}");
    assert!(md.contains("[course.enrolled](#courseenrolled-v2)"), "{md}");
    assert!(
        md.contains("  - mailer (queue `mailer.course.enrolled.v2`)"),
        "{md}"
    );
    assert!(md.contains("```json"), "{md}");
}

#[tokio::test]
async fn with_bus_lists_its_queues_under_the_bus_service() {
    let bus = Bus::builder()
        .broker("memory://catalog-with-bus")
        .service("mailer")
        .build()
        .await
        .unwrap();
    // A custom queue name: the service cannot be read from it, the bus knows it.
    bus.subscribe_with(
        |_: Enrolled| async {},
        crate::SubscribeOptions::new().queue("outbound-mail"),
    )
    .unwrap();
    let catalog = Catalog::new("herald.events")
        .event::<Enrolled>()
        .with_bus(&bus);
    assert_eq!(
        services(&catalog),
        vec![
            (
                "notification-service".into(),
                "notification-service.course.enrolled.v2".into()
            ),
            ("mailer".into(), "outbound-mail".into()),
        ]
    );
    bus.shutdown().await.unwrap();
}
