//! Broker URLs from configuration, flags and environment: checked, split, parsed by the
//! RabbitMQ transport, and redacted. No panic on any text; and a password, whatever characters
//! it holds, never survives redaction.
#![no_main]

use std::sync::Once;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(herald_rabbitmq::register);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let shown = herald::transport::redact_url(text);
    assert!(!shown.chars().any(|c| c.is_control()), "{shown:?}");
    let _ = herald::transport::split_url_list(text);
    let _ = herald::transport::scheme_of(text);
    if let Err(e) = herald::transport::check_url(text) {
        let _ = e.to_string();
    }
    if let Ok(c) = herald_rabbitmq::RabbitConfig::from_url(text, "fuzz") {
        assert!(!c.urls.is_empty());
    }

    // The property: `amqp://alice:<password>@<host>` shows as `amqp://alice:***@<host>` for any
    // password (no control characters, no `,scheme://`) and any host without `@`.
    let (password, host) = text.split_once('\n').unwrap_or((text, "h"));
    let plain = |s: &str| !s.chars().any(|c| c.is_control());
    if plain(password) && plain(host) && !host.contains(['@', ',']) && !password.contains(',') {
        let url = format!("amqp://alice:{password}@{host}");
        assert_eq!(
            herald::transport::redact_url(&url),
            format!("amqp://alice:***@{host}"),
            "{url:?}"
        );
    }
});
