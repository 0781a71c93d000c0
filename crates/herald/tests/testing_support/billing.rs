//! A billing service and the test of it that `testing_harness.rs` runs on the embedded
//! transports and `herald-rabbitmq`'s `testing_harness_rabbitmq.rs` on RabbitMQ: the same
//! test body, only the broker line differs.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald::middleware::RetryPolicy;
use herald::testing::{Settlement, TestApp};
use herald::{Bus, Context, Event, HandlerError, SubscribeOptions};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "order.placed")]
struct OrderPlaced {
    id: u32,
    amount_cents: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "invoice.issued")]
struct InvoiceIssued {
    order: u32,
    total_cents: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "invoice.lookup")]
struct LookUpInvoice {
    order: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct InvoiceTotal {
    total_cents: u64,
}

/// The "billing service" under test: invoices orders (refusing free ones for good, failing the
/// first attempt of order 7 for a while), and answers invoice look-ups.
pub fn billing(bus: &Bus, flaky_calls: Arc<AtomicU32>) -> herald::Result<()> {
    bus.subscribe_with(
        move |o: OrderPlaced, ctx: Context| {
            let flaky = flaky_calls.clone();
            async move {
                if o.amount_cents == 0 {
                    return Err(HandlerError::permanent(
                        "an order of nothing cannot be invoiced",
                    ));
                }
                if o.id == 7 && flaky.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err(HandlerError::transient("ledger busy"));
                }
                ctx.publish(&InvoiceIssued {
                    order: o.id,
                    total_cents: o.amount_cents + 100,
                })
                .await?;
                Ok(())
            }
        },
        SubscribeOptions::new().retry(RetryPolicy {
            immediate: 0,
            jitter: 0.0,
            ..RetryPolicy::fixed(3, Duration::from_millis(30))
        }),
    )?;
    bus.subscribe(|q: LookUpInvoice, ctx: Context| async move {
        if q.order == 0 {
            ctx.reply_error("no order 0").await?;
        } else {
            ctx.reply(&InvoiceTotal {
                total_cents: u64::from(q.order) * 10,
            })
            .await?;
        }
        Ok::<(), HandlerError>(())
    })
}

/// The test, whatever the broker.
pub async fn billing_behaves(app: TestApp) {
    app.publish(&OrderPlaced {
        id: 1,
        amount_cents: 500,
    })
    .await
    .unwrap();
    app.publish(&OrderPlaced {
        id: 7,
        amount_cents: 900,
    })
    .await
    .unwrap();
    app.publish(&OrderPlaced {
        id: 9,
        amount_cents: 0,
    })
    .await
    .unwrap();
    app.settle().await.unwrap();

    // Handled once each (order 7 on its second delivery), the free one dead-lettered at once.
    let handled = app.handled::<OrderPlaced>();
    assert_eq!(handled.len(), 2, "{:?}", handled.events());
    handled.one_where(|o| o.id == 1);
    handled.one_where(|o| o.id == 7);
    assert_eq!(app.retried::<OrderPlaced>().once().id, 7);
    assert_eq!(app.retried::<OrderPlaced>().reasons(), vec!["ledger busy"]);
    let dead = app.dead_lettered::<OrderPlaced>();
    assert_eq!(dead.once().id, 9);
    dead.with_reason("an order of nothing");

    // Published: the test's own orders and the service's invoices, in the same flow.
    assert_eq!(app.published::<OrderPlaced>().len(), 3);
    let invoices = app.published::<InvoiceIssued>();
    assert_eq!(
        invoices.one_where(|i| i.order == 7),
        &InvoiceIssued {
            order: 7,
            total_cents: 1000
        }
    );
    let order_1 = app.published::<OrderPlaced>().envelopes()[0].id.clone();
    let invoice_1 = invoices
        .envelopes()
        .into_iter()
        .find(|e| e.causation_id.as_deref() == Some(order_1.as_str()))
        .expect("invoice 1 caused by order 1");
    assert_eq!(invoice_1.correlation_id.as_deref(), Some(order_1.as_str()));
    // Nobody consumes invoices here, and the harness says where each settlement came from.
    assert!(app
        .settlements()
        .iter()
        .all(|s| s.queue == "billing.order.placed" || s.queue == "billing.invoice.lookup"));
    assert!(app.settlements().iter().any(
        |s| matches!(&s.settlement, Settlement::DeadLettered { kind, .. } if kind == "permanent")
    ));

    // Request/reply through the service.
    let total: InvoiceTotal = app
        .bus()
        .request(&LookUpInvoice { order: 4 })
        .await
        .unwrap();
    assert_eq!(total, InvoiceTotal { total_cents: 40 });
    let refused = app
        .bus()
        .request::<_, InvoiceTotal>(&LookUpInvoice { order: 0 })
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("no order 0"), "{refused}");

    // An assertion that does not hold says what was seen instead.
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        app.handled::<OrderPlaced>().once();
    }))
    .unwrap_err();
    let text = failed.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        text.contains("expected order.placed handled exactly once, saw it 2 times"),
        "{text}"
    );
    app.stop().await.unwrap();
}
