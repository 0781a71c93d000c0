//! The catalog as one self-contained HTML page: inline CSS and a few lines of script for the
//! search box, nothing fetched from anywhere.

use std::fmt::Write;

use serde_json::Value;

use super::{Catalog, CatalogEvent};

const STYLE: &str = "
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:1rem 2rem}
header h1{margin:0;font-size:1.4rem}
header p{margin:.3rem 0 0;color:#b9c0cc}
main{padding:1rem 2rem;max-width:70rem}
#search{width:100%;padding:.6rem;font-size:1rem;border:1px solid #c5cad3;border-radius:4px;box-sizing:border-box}
.event{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:1rem 1.2rem;margin:1rem 0}
.event h2{margin:0 0 .3rem;font-size:1.2rem}
.meta{color:#5b6475;font-size:.9rem}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.85rem}
pre{background:#f0f2f5;padding:.7rem;border-radius:4px;overflow:auto;max-height:24rem}
.flow{margin:.6rem 0}
.svc{display:inline-block;background:#e7eefc;border-radius:3px;padding:0 .4rem;margin:.1rem}
.empty{color:#8a93a3}
details{margin:.4rem 0}
";

const SCRIPT: &str = "
const box=document.getElementById('search');
box.addEventListener('input',()=>{const q=box.value.toLowerCase();
for(const e of document.querySelectorAll('.event')){e.hidden=q!==''&&!e.dataset.search.includes(q);}});
";

/// Render the page.
pub(super) fn page(catalog: &Catalog) -> String {
    let mut out = String::new();
    let exchange = escape(&catalog.exchange);
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>Event catalog: {exchange}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <header><h1>Event catalog</h1><p>{} events on the topic exchange <code>{exchange}</code></p></header>\n\
         <main>\n<input id=\"search\" type=\"search\" placeholder=\"Search events, services, fields…\" autofocus>\n",
        catalog.events.len()
    );
    if catalog.events.is_empty() {
        out.push_str("<p class=\"empty\">No events registered.</p>\n");
    }
    for event in &catalog.events {
        event_section(&mut out, event);
    }
    let _ = write!(
        out,
        "</main>\n<script>{SCRIPT}</script>\n</body>\n</html>\n"
    );
    out
}

fn event_section(out: &mut String, event: &CatalogEvent) {
    let consumers: Vec<String> = event
        .consumers
        .iter()
        .map(|c| format!("{} {}", c.service, c.queue))
        .collect();
    // Field names are searchable too: the schema's properties, else the example's keys.
    let fields: Vec<&str> = event
        .schema
        .as_ref()
        .and_then(|s| s.get("properties"))
        .or(event.example.as_ref())
        .and_then(Value::as_object)
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let search = format!(
        "{} {} {} {} {} {} {}",
        event.name,
        event.routing_key,
        event.type_name,
        event.description,
        event.publishers.join(" "),
        consumers.join(" "),
        fields.join(" ")
    )
    .to_lowercase();
    let _ = write!(
        out,
        "<section class=\"event\" id=\"{anchor}\" data-search=\"{search}\">\n\
         <h2>{name} <small>v{version}</small></h2>\n\
         <div class=\"meta\">routing key <code>{rk}</code> · type <code>{ty}</code></div>\n",
        anchor = escape(&event.routing_key),
        search = escape(&search),
        name = escape(&event.name),
        version = event.version,
        rk = escape(&event.routing_key),
        ty = escape(&event.type_name),
    );
    if !event.description.is_empty() {
        let _ = writeln!(out, "<p>{}</p>", escape(&event.description));
    }
    let publishers = services(event.publishers.iter().map(|p| escape(p)));
    let consumers = services(
        event
            .consumers
            .iter()
            .map(|c| format!("{} <code>{}</code>", escape(&c.service), escape(&c.queue))),
    );
    let _ = writeln!(out, "<div class=\"flow\">{publishers} → {consumers}</div>");
    json_block(out, "Schema", event.schema.as_ref());
    json_block(out, "Example", event.example.as_ref());
    out.push_str("</section>\n");
}

fn services(items: impl Iterator<Item = String>) -> String {
    let spans: Vec<String> = items
        .map(|s| format!("<span class=\"svc\">{s}</span>"))
        .collect();
    if spans.is_empty() {
        "<span class=\"empty\">(not declared)</span>".to_string()
    } else {
        spans.join(" ")
    }
}

fn json_block(out: &mut String, title: &str, value: Option<&Value>) {
    match value {
        Some(v) => {
            let text = serde_json::to_string_pretty(v).unwrap_or_default();
            let open = if title == "Example" { " open" } else { "" };
            let _ = writeln!(
                out,
                "<details{open}><summary>{title}</summary><pre>{}</pre></details>",
                escape(&text)
            );
        }
        None => {
            let _ = writeln!(out, "<p class=\"empty\">{title}: none</p>");
        }
    }
}

/// Escape text for HTML element content and double-quoted attribute values.
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
