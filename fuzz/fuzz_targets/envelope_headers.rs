//! The SQLite transport's stored headers (a JSON object of strings, as any process sharing the
//! file may have written it) into an envelope with `Envelope::from_headers`, and back: whatever
//! the text, no panic, and the attributes survive a round trip.
#![no_main]

use std::collections::BTreeMap;

use bytes::Bytes;
use herald::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The row's routing key and body come after the headers, split at the first NUL.
    let (headers, rest) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(map) = serde_json::from_slice::<BTreeMap<String, String>>(headers) else {
        return;
    };
    let routing_key = String::from_utf8_lossy(rest.get(..rest.len().min(64)).unwrap_or(&[]));
    let body = Bytes::copy_from_slice(rest);
    let e = Envelope::from_headers(map, &routing_key, body);
    let _ = e.body_value();
    let _ = e.last_error();
    let again = Envelope::from_headers(e.header_map(), &e.routing_key, e.body.clone());
    assert_eq!(again.id, e.id);
    assert_eq!(again.event_type, e.event_type);
    assert_eq!(again.source, e.source);
    assert_eq!(again.event_version, e.event_version);
    assert_eq!(again.attempt, e.attempt);
    assert_eq!(again.correlation_id, e.correlation_id);
    assert_eq!(again.headers, e.headers);
});
