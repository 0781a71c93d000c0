//! The HTTP API's request bodies and path segments, through the real router of `herald serve`
//! (guard, token, handlers) on a memory broker: publish, replay, purge, log in. Whatever the
//! body, the answer is a 2xx/4xx/5xx that is not a 500 (an internal error), and no panic.
#![no_main]

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::Request;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

struct App {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    token: String,
}

fn app() -> &'static App {
    static APP: OnceLock<App> = OnceLock::new();
    APP.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let (router, token) = runtime.block_on(async {
            let bus = herald::Bus::builder()
                .service("fuzz")
                .broker("memory://fuzz-http")
                .max_message_bytes(64 * 1024)
                .build()
                .await
                .expect("bus");
            bus.subscribe_raw(
                "orders",
                "order.*",
                |_ctx: herald::Context| std::future::ready(()),
                herald::SubscribeOptions::new(),
            )
            .expect("subscribe");
            bus.start().await.expect("start");
            let server = herald_http::serve::Server::new(
                bus,
                herald_http::serve::ServeConfig::new("127.0.0.1:0".parse().unwrap()),
            )
            .await
            .expect("server");
            (server.router(), server.token().to_string())
        });
        App {
            runtime,
            router,
            token,
        }
    })
}

/// Percent-encode a path segment.
fn segment(raw: &[u8]) -> String {
    raw.iter()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' => {
                (*b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let app = app();
    // [route][segment length][segment][body]
    let route = data[0] % 5;
    let rest = &data[1..];
    let len = usize::from(*rest.first().unwrap_or(&0)).min(rest.len().saturating_sub(1));
    let (name, body) = rest.get(1..).unwrap_or(&[]).split_at(len);
    let name = if name.is_empty() {
        "order.placed".to_string()
    } else {
        segment(name)
    };
    let (method, uri) = match route {
        0 => ("POST", format!("/api/events/{name}?correlation_id=c")),
        1 => ("POST", format!("/api/dlq/{name}/replay")),
        2 => ("POST", format!("/api/dlq/{name}/purge")),
        3 => ("POST", "/api/session".to_string()),
        _ => ("GET", format!("/api/dlq/{name}?limit=5")),
    };
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {}", app.token))
        .body(Body::from(body.to_vec()))
        .expect("request");
    let response = app
        .runtime
        .block_on(app.router.clone().oneshot(request))
        .expect("infallible");
    assert_ne!(response.status().as_u16(), 500, "{:?}", response);
});
