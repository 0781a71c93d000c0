//! JSON Schema validation on consume: a body that breaks the event's schema goes to the dead
//! letters with the validation error; a valid one reaches the handler.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald::envelope::header;
use herald::{Bus, Envelope, Event, SubscribeOptions};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A review with a 1..=5 rating.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, Event)]
#[event(name = "review.created", schema)]
struct ReviewCreated {
    review_id: u64,
    #[schemars(range(min = 1, max = 5))]
    rating: u8,
}

#[tokio::test]
async fn invalid_bodies_are_dead_lettered_with_the_reason() {
    let schema = ReviewCreated::event_schema().expect("#[event(schema)] provides a schema");
    assert_eq!(schema["title"], "ReviewCreated");
    let bus = Bus::builder()
        .broker("memory://schema-test")
        .service("ratings")
        .build()
        .await
        .unwrap();
    let handled = Arc::new(AtomicU32::new(0));
    let h = handled.clone();
    bus.subscribe_with(
        move |_: ReviewCreated| {
            h.fetch_add(1, Ordering::SeqCst);
            async {}
        },
        SubscribeOptions::new().validate_schema(),
    )
    .unwrap();
    bus.start().await.unwrap();
    // rating 9 deserializes into u8 fine: only the schema catches it.
    let bad = Envelope::new(
        "review.created",
        1,
        "review.created",
        "x",
        Bytes::from_static(br#"{"review_id":1,"rating":9}"#),
    );
    bus.publisher()
        .publish_envelopes(vec![bad], false)
        .await
        .unwrap();
    bus.publish(&ReviewCreated {
        review_id: 2,
        rating: 4,
    })
    .await
    .unwrap();
    let mut dead = Vec::new();
    for _ in 0..100 {
        dead = herald::transport::dead_letter_admin(&**bus.transport())
            .unwrap()
            .dead_letters("ratings.review.created", 10)
            .await
            .unwrap();
        if !dead.is_empty() && handled.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        handled.load(Ordering::SeqCst),
        1,
        "the valid review is handled"
    );
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0]
            .envelope
            .headers
            .get(header::ERROR_KIND)
            .map(String::as_str),
        Some("schema")
    );
    assert!(dead[0].error().contains("rating"), "{}", dead[0].error());
    bus.shutdown().await.unwrap();
}

#[tokio::test]
async fn validate_schema_without_a_schema_is_a_config_error() {
    #[derive(Debug, Clone, Serialize, Deserialize, Event)]
    #[event(name = "no.schema")]
    struct NoSchema {
        x: u8,
    }
    let bus = Bus::builder().broker("memory://").build().await.unwrap();
    let err = bus
        .subscribe_with(
            |_: NoSchema| async {},
            SubscribeOptions::new().validate_schema(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("#[event(schema)]"), "{err}");
}
