//! The Grafana dashboard and the Prometheus alert rules in `deploy/` may only name metrics the
//! code records (so neither can rot when a metric is renamed), and the dashboard shows them all.
//! The alert rules also pass Prometheus's own `promtool`: its syntax check, and the rule unit
//! tests in `deploy/prometheus/alerts.test.yml`, which fire every alert on synthetic series.
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use herald::telemetry::{MetricKind, ALL};
use serde_json::Value;

fn deploy(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(file)
}

/// Every `herald_*` identifier in a query.
fn metric_names(query: &str) -> Vec<String> {
    let bytes = query.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut names = Vec::new();
    let mut i = 0;
    while let Some(found) = query[i..].find("herald_") {
        let start = i + found;
        let mut end = start;
        while end < bytes.len() && word(bytes[end]) {
            end += 1;
        }
        if start == 0 || !word(bytes[start - 1]) {
            names.push(query[start..end].to_string());
        }
        i = end;
    }
    names
}

/// The registered metric a series name belongs to (`_bucket`/`_sum`/`_count` of a histogram).
fn registered(series: &str) -> Option<&'static str> {
    ALL.iter()
        .map(|m| m.name)
        .find(|n| *n == series)
        .or_else(|| {
            ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
                let base = series.strip_suffix(suffix)?;
                ALL.iter()
                    .find(|m| m.name == base && m.kind == MetricKind::Histogram)
                    .map(|m| m.name)
            })
        })
}

/// Every string under a key named `key`, anywhere in `value`.
fn strings_under(value: &Value, key: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match v {
                    Value::String(s) if k == key => out.push(s.clone()),
                    _ => strings_under(v, key, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| strings_under(v, key, out)),
        _ => {}
    }
}

#[test]
fn dashboard_queries_use_registered_metrics_and_show_all_of_them() {
    let text = std::fs::read_to_string(deploy("grafana/herald-dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(dashboard["schemaVersion"], 39);
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");

    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "duplicate id"
        );
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{} has no query", panel["title"]);
        for t in targets {
            assert_eq!(
                t["datasource"]["uid"], "${DS_PROMETHEUS}",
                "{}",
                panel["title"]
            );
        }
        strings_under(panel, "expr", &mut exprs);
    }
    let mut variables = Vec::new();
    strings_under(&dashboard["templating"], "query", &mut variables);
    assert!(!variables.is_empty());

    let mut shown = BTreeSet::new();
    for query in exprs.iter().chain(&variables) {
        let names = metric_names(query);
        assert!(!names.is_empty(), "query names no Herald metric: {query}");
        for name in names {
            let metric = registered(&name)
                .unwrap_or_else(|| panic!("`{name}` in `{query}` is not a metric Herald records"));
            shown.insert(metric);
        }
    }
    let missing: Vec<&str> = ALL
        .iter()
        .map(|m| m.name)
        .filter(|n| !shown.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics on no dashboard panel: {missing:?}"
    );
}

#[test]
fn alert_rules_use_registered_metrics() {
    let text = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let names = metric_names(&text);
    assert!(names.len() >= 4, "{names:?}");
    for name in names {
        assert!(
            registered(&name).is_some(),
            "`{name}` in alerts.yml is not a metric Herald records"
        );
    }
    for alert in [
        "HeraldDeadLettersIncreasing",
        "HeraldOutboxLag",
        "HeraldConnectionDown",
        "HeraldConsumerStalled",
    ] {
        assert!(text.contains(&format!("alert: {alert}")), "{alert}");
    }
}

/// `promtool` comes with Debian's `prometheus` package; `scripts/services.sh` installs it.
fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(deploy("prometheus"))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): `bash scripts/services.sh` installs it (Debian package prometheus)")
        });
    assert!(
        out.status.success(),
        "promtool {}:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_pass_promtool_check_and_fire_in_its_unit_tests() {
    promtool(&["check", "rules", "alerts.yml"]);
    promtool(&["test", "rules", "alerts.test.yml"]);
    // Every alert has a case in the unit tests, so a new alert cannot go untested.
    let rules = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(deploy("prometheus/alerts.test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts.len(), 7, "{alerts:?}");
    for alert in alerts {
        assert!(
            tests.contains(&format!(
                "alertname: {alert}\n        exp_alerts:\n          - "
            )),
            "alerts.test.yml has no case where {alert} fires"
        );
    }
}

#[test]
fn name_scanner_finds_series_and_suffixes() {
    assert_eq!(
        metric_names(
            "sum(rate(herald_handler_duration_seconds_bucket{q=\"a\"}[5m])) / herald_in_flight"
        ),
        ["herald_handler_duration_seconds_bucket", "herald_in_flight"]
    );
    assert_eq!(
        registered("herald_handler_duration_seconds_count"),
        Some("herald_handler_duration_seconds")
    );
    assert_eq!(
        registered("herald_acked_total_count"),
        None,
        "a counter has no _count series"
    );
    assert_eq!(registered("herald_nonexistent"), None);
}
