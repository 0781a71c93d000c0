//! A RabbitMQ message as it comes off the wire: the content header's properties (decoded by
//! amqprs's own wire decoder, headers table included) and a body, read by Herald
//! (`herald_rabbitmq::envelope_from_amqp`, the path of every delivery and dead-letter listing).
//! Whatever a peer sends: no panic in Herald.
//!
//! amqprs's decoder (amqp_serde 0.4) itself panics on a field-value type tag it does not know
//! ("unsupported enum variant for AMQP field value"), where it should return an error; this
//! fuzzer found it in its first seconds. RabbitMQ refuses such tags when a message is
//! published, so a broker never delivers one; the target sets those inputs aside (below) and
//! goes on fuzzing what Herald reads.
#![no_main]

use std::cell::Cell;
use std::sync::Once;

use amqprs::BasicProperties;
use libfuzzer_sys::fuzz_target;

thread_local! {
    static IN_DECODER: Cell<bool> = const { Cell::new(false) };
}

/// amqprs's wire decoding of the properties, or `None` where it refuses them or panics.
fn decode(bytes: &[u8]) -> Option<BasicProperties> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        // libFuzzer's hook aborts on any panic; let the decoder's own unwind to catch_unwind.
        let fuzzer_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_DECODER.with(Cell::get) {
                fuzzer_hook(info)
            }
        }));
    });
    IN_DECODER.with(|d| d.set(true));
    let decoded = std::panic::catch_unwind(|| amqp_serde::from_bytes::<BasicProperties>(bytes));
    IN_DECODER.with(|d| d.set(false));
    decoded.ok()?.ok()
}

fuzz_target!(|data: &[u8]| {
    // [properties length: u16 big endian][properties][body]
    if data.len() < 2 {
        return;
    }
    let len = usize::from(u16::from_be_bytes([data[0], data[1]])).min(data.len() - 2);
    let (props, body) = data[2..].split_at(len);
    let Some(props) = decode(props) else {
        return;
    };
    let e = herald_rabbitmq::envelope_from_amqp("fuzz.key", &props, body.to_vec());
    let _ = e.body_value();
    // What Herald would publish for it again (a retry, a replay) encodes without panicking.
    let _ = herald_rabbitmq::amqp_properties(&e);
});
