//! The catalog as Markdown: a table of contents, then one section per event.

use std::fmt::Write;

use super::Catalog;

/// Render the document.
pub(super) fn document(catalog: &Catalog) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "# Event catalog\n\n{} events on the topic exchange `{}`.\n",
        catalog.events.len(),
        catalog.exchange
    );
    if !catalog.events.is_empty() {
        out.push_str("| event | version | routing key | publishers | consumers |\n");
        out.push_str("|---|---|---|---|---|\n");
        for e in &catalog.events {
            let consumers: Vec<&str> = e.consumers.iter().map(|c| c.service.as_str()).collect();
            let _ = writeln!(
                out,
                "| [{}](#{}) | {} | `{}` | {} | {} |",
                cell(&e.name),
                anchor(&format!("{} v{}", e.name, e.version)),
                e.version,
                e.routing_key,
                cell(&e.publishers.join(", ")),
                cell(&consumers.join(", "))
            );
        }
    }
    for e in &catalog.events {
        let _ = writeln!(out, "\n## {} v{}\n", e.name, e.version);
        if !e.description.is_empty() {
            let _ = writeln!(out, "{}\n", e.description);
        }
        let _ = writeln!(out, "- Routing key: `{}`", e.routing_key);
        let _ = writeln!(out, "- Rust type: `{}`", e.type_name);
        let publishers = if e.publishers.is_empty() {
            "(not declared)".to_string()
        } else {
            e.publishers.join(", ")
        };
        let _ = writeln!(out, "- Published by: {publishers}");
        if e.consumers.is_empty() {
            let _ = writeln!(out, "- Consumed by: (not declared)");
        } else {
            let _ = writeln!(out, "- Consumed by:");
            for c in &e.consumers {
                let _ = writeln!(out, "  - {} (queue `{}`)", c.service, c.queue);
            }
        }
        for (title, value) in [("Example", &e.example), ("Schema", &e.schema)] {
            if let Some(v) = value {
                let text = serde_json::to_string_pretty(v).unwrap_or_default();
                let _ = writeln!(out, "\n{title}:\n\n```json\n{text}\n```");
            }
        }
    }
    out
}

/// Text safe inside a table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces → `-`.
fn anchor(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}
