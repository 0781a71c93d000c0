//! `herald docs`, run as a user runs it: the files it writes, what it prints, and rendering a
//! catalog exported by another system (`--from`).

use std::path::Path;
use std::process::Output;

mod common;
use common::herald;

use serde_json::Value;

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "herald failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8 output")
}

/// Errors of `doc` against the official AsyncAPI 3.0.0 schema vendored in the herald crate.
fn asyncapi_errors(doc: &Value) -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../herald/tests/fixtures/asyncapi-3.0.0.schema.json"
    );
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("vendored schema")).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("AsyncAPI schema compiles");
    validator
        .iter_errors(doc)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn docs_writes_four_files_and_the_asyncapi_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    ok(&herald(
        dir.path(),
        &[
            "docs",
            "--out",
            "tmp",
            "--broker",
            "amqp://guest:guest@127.0.0.1:5672/%2f",
        ],
    ));
    let out = dir.path().join("tmp");
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "asyncapi.json",
            "catalog.html",
            "catalog.json",
            "catalog.md"
        ]
    );

    let asyncapi = read_json(&out.join("asyncapi.json"));
    let errs = asyncapi_errors(&asyncapi);
    assert!(errs.is_empty(), "{errs:#?}");
    assert_eq!(asyncapi["servers"]["broker"]["host"], "127.0.0.1:5672");
    assert!(!asyncapi.to_string().contains("guest:guest"));
    assert_eq!(asyncapi["operations"].as_object().unwrap().len(), 4 + 8);

    let catalog = read_json(&out.join("catalog.json"));
    assert_eq!(catalog["exchange"], "herald.events");
    let events = catalog["events"].as_array().unwrap();
    let names: Vec<&str> = events.iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "user.registered",
            "course.created",
            "course.enrolled",
            "review.created"
        ]
    );
    let review = &events[3];
    assert_eq!(review["publishers"], serde_json::json!(["review-service"]));
    assert_eq!(
        review["consumers"][1],
        serde_json::json!({"service": "analytics-service", "queue": "analytics-service.review.created"})
    );
    assert_eq!(review["schema"]["properties"]["rating"]["maximum"], 5.0);
    assert_eq!(review["example"]["rating"], 5);

    let html = std::fs::read_to_string(out.join("catalog.html")).unwrap();
    for name in names {
        assert!(html.contains(name), "{name} missing from the HTML");
    }
    let md = std::fs::read_to_string(out.join("catalog.md")).unwrap();
    assert!(md.contains("## course.enrolled v1"), "{md}");
}

#[test]
fn one_format_prints_and_from_renders_another_systems_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let printed = ok(&herald(dir.path(), &["docs", "--format", "json"]));
    let mut catalog: Value = serde_json::from_str(&printed).expect("--format json prints JSON");
    assert!(
        !dir.path().join("docs").exists(),
        "printing wrote files too"
    );

    // A user's own system: another exchange, one event with no example (generated from the schema).
    catalog["exchange"] = "shop.events".into();
    let mut order = catalog["events"][2].clone();
    order["name"] = "order.placed".into();
    order["routing_key"] = "order.placed".into();
    order["type_name"] = "OrderPlaced".into();
    order["publishers"] = serde_json::json!(["shop"]);
    order["consumers"] = serde_json::json!([{"service": "billing", "queue": "billing.order.#"}]);
    order["example"] = Value::Null;
    catalog["events"] = Value::Array(vec![order]);
    std::fs::write(dir.path().join("shop.json"), catalog.to_string()).unwrap();

    let printed = ok(&herald(
        dir.path(),
        &["docs", "--from", "shop.json", "--format", "asyncapi"],
    ));
    let doc: Value = serde_json::from_str(&printed).unwrap();
    let errs = asyncapi_errors(&doc);
    assert!(errs.is_empty(), "{errs:#?}");
    assert_eq!(
        doc["channels"]["order.placed"]["bindings"]["amqp"]["exchange"]["name"],
        "shop.events"
    );
    assert_eq!(
        doc["operations"]["billing.receive.order.placed"]["action"],
        "receive"
    );
    let example = &doc["components"]["messages"]["order.placed"]["examples"][0]["payload"];
    assert_eq!(example["course_title"], "string", "{example}");

    let md = ok(&herald(
        dir.path(),
        &["docs", "--from", "shop.json", "--format", "markdown"],
    ));
    assert!(md.contains("order.placed"), "{md}");
}

#[test]
fn a_file_that_is_not_a_catalog_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.json"), "{\"events\": 1}").unwrap();
    let out = herald(dir.path(), &["docs", "--from", "bad.json"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.json") && err.contains("herald docs --format json"),
        "{err}"
    );
    let out = herald(dir.path(), &["docs", "--from", "missing.json"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the catalog missing.json"));
}
