//! The saga process of `tests/saga_restart.rs` (not a test itself): opens the store named by
//! `HERALD_ES_TEST_DB`, optionally starts booking `BOOKING_START` (deadline `BOOKING_DEADLINE_MS`),
//! prints `READY`, then fires due timeouts until it is killed.

#[path = "booking.rs"]
mod booking;

use std::time::Duration;

use booking::{envelope, Booking, BookingRequested};
use herald_es::saga::SagaRunner;

#[tokio::main]
async fn main() {
    let url = std::env::var("HERALD_ES_TEST_DB").expect("HERALD_ES_TEST_DB");
    let db = herald_es::open(&url, "booking-service", herald_es::Upcasters::new())
        .await
        .expect("open the store");
    let runner = SagaRunner::<Booking>::new(db.sagas()).timeout_poll(Duration::from_millis(50));
    if let Ok(id) = std::env::var("BOOKING_START") {
        let deadline_ms = std::env::var("BOOKING_DEADLINE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        runner
            .handle(&envelope(&BookingRequested {
                booking_id: id,
                deadline_ms,
            }))
            .await
            .expect("start the booking");
        println!("STARTED");
    }
    println!("READY");
    runner
        .run_timeouts(tokio_util::sync::CancellationToken::new())
        .await;
}
