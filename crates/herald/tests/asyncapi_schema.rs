//! The AsyncAPI documents Herald generates are valid against the official AsyncAPI 3.0.0 JSON
//! Schema (vendored from `@asyncapi/specs`, see tests/fixtures/README.md).

use herald::catalog::Catalog;
use herald::{Event, QueueSpec, Topology};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How deep a learner went.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum Level {
    Beginner,
    Expert,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
struct Course {
    course_id: u64,
    title: String,
    level: Level,
}

/// A learner enrolled in a course.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, Event)]
#[event(name = "course.enrolled", version = 2, publisher = "course-service",
        consumers = ["notification-service"], schema)]
struct CourseEnrolled {
    enrollment_id: u64,
    course: Course,
    tags: Vec<String>,
    referrer: Option<String>,
}

/// A review, without a schema.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "review.created")]
struct ReviewCreated {
    rating: u8,
}

fn validator() -> jsonschema::Validator {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/asyncapi-3.0.0.schema.json"
    );
    let text = std::fs::read_to_string(path).expect("vendored AsyncAPI schema");
    let schema: Value = serde_json::from_str(&text).expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("the AsyncAPI 3.0.0 schema compiles")
}

fn errors(validator: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    validator
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect()
}

fn catalog() -> Catalog {
    let mut topology = Topology::new("herald.events");
    topology.add_queue(QueueSpec::new("analytics-service.#", "#"));
    topology.add_queue(QueueSpec::new("search.course.*", "course.*"));
    Catalog::new("herald.events")
        .event::<CourseEnrolled>()
        .event::<ReviewCreated>()
        .publisher::<ReviewCreated>("review-service")
        .with_topology(&topology)
}

#[test]
fn generated_documents_are_valid_asyncapi_3() {
    let validator = validator();
    for broker in [
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        "amqps://a:b@rabbit-1/prod,amqps://a:b@rabbit-2/prod",
        "sqlite://.herald/herald.db",
        "memory://",
    ] {
        let doc = catalog().broker(broker).unwrap().to_asyncapi();
        let errs = errors(&validator, &doc);
        assert!(errs.is_empty(), "{broker}: {errs:#?}\n{doc:#}");
    }
    let empty = Catalog::new("herald.events").to_asyncapi();
    assert!(errors(&validator, &empty).is_empty());
}

#[test]
fn the_validator_catches_a_broken_document() {
    // Proves the vendored schema is really enforced: a wrong action and a missing channel fail.
    let validator = validator();
    let mut doc = catalog().to_asyncapi();
    let op = doc["operations"]
        .as_object_mut()
        .and_then(|ops| ops.values_mut().next())
        .expect("an operation");
    op["action"] = "publish".into();
    assert!(!errors(&validator, &doc).is_empty());
    let mut doc = catalog().to_asyncapi();
    doc["asyncapi"] = "2.6.0".into();
    assert!(!errors(&validator, &doc).is_empty());
    // The AMQP binding schemas are enforced too.
    let mut doc = catalog().to_asyncapi();
    doc["channels"]["review.created"]["bindings"]["amqp"]["exchange"]["type"] = "bogus".into();
    assert!(!errors(&validator, &doc).is_empty());
}

#[test]
fn payload_schemas_resolve_inside_the_document() {
    let doc = catalog().to_asyncapi();
    let payload = &doc["components"]["messages"]["course.enrolled.v2"]["payload"];
    let course_ref = payload["properties"]["course"]["$ref"]
        .as_str()
        .expect("a $ref to Course");
    let pointer = course_ref.trim_start_matches('#');
    let course = doc.pointer(pointer).expect("the $ref resolves");
    assert_eq!(
        course["properties"]["level"]["$ref"],
        "#/components/schemas/Level"
    );
    assert!(doc.pointer("/components/schemas/Level").is_some());
    // The generated example is valid against the event's own schema.
    let schema = CourseEnrolled::event_schema().unwrap();
    let example = &catalog().to_json()["events"][0]["example"];
    let v = jsonschema::validator_for(&schema).unwrap();
    assert!(v.is_valid(example), "{example}");
    let _: CourseEnrolled = serde_json::from_value(example.clone()).expect("example decodes");
}
