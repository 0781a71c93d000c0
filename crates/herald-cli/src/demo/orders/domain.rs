//! The order-fulfilment domain: events, commands, four event-sourced aggregates (order,
//! reservation, payment, shipment) and the fulfilment saga that drives an order through them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use herald::Event;
use herald_es::saga::{Effects, Saga};
use herald_es::{event_set, Aggregate};
use serde::{Deserialize, Serialize};

// ---- Events (facts, appended by the aggregates) ----

/// A customer placed an order.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "order.placed", publisher = "order-service", consumers = ["order-fulfilment"])]
pub struct OrderPlaced {
    pub order_id: String,
    pub sku: String,
    pub quantity: u32,
    pub amount_cents: u64,
}

/// The order was shipped and is complete.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "order.completed", publisher = "order-service")]
pub struct OrderCompleted {
    pub order_id: String,
}

/// The order was cancelled (`payment_declined` or `payment_timeout`).
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "order.cancelled", publisher = "order-service")]
pub struct OrderCancelled {
    pub order_id: String,
    pub reason: String,
}

/// Stock was set aside for an order.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "inventory.reserved", publisher = "inventory-service", consumers = ["order-fulfilment"])]
pub struct InventoryReserved {
    pub order_id: String,
    pub sku: String,
    pub quantity: u32,
}

/// A reservation was given back (compensation).
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "inventory.released", publisher = "inventory-service")]
pub struct InventoryReleased {
    pub order_id: String,
}

/// The payment went through.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "payment.captured", publisher = "payment-service", consumers = ["order-fulfilment"])]
pub struct PaymentCaptured {
    pub order_id: String,
    pub amount_cents: u64,
}

/// The payment was refused.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "payment.declined", publisher = "payment-service", consumers = ["order-fulfilment"])]
pub struct PaymentDeclined {
    pub order_id: String,
    pub reason: String,
}

/// A captured payment was given back: the order was called off before its answer arrived.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "payment.refunded", publisher = "payment-service")]
pub struct PaymentRefunded {
    pub order_id: String,
    pub amount_cents: u64,
}

/// A payment was called off before the gateway answered; a later answer takes no money.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "payment.voided", publisher = "payment-service")]
pub struct PaymentVoided {
    pub order_id: String,
}

/// The parcel left the warehouse.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "shipment.dispatched", publisher = "shipping-service", consumers = ["order-fulfilment"])]
pub struct ShipmentDispatched {
    pub order_id: String,
    pub tracking: String,
}

// ---- Commands (sent by the saga through the outbox; a reply is an event correlated by id) ----

/// Set stock aside for an order.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "inventory.reserve", publisher = "order-fulfilment", consumers = ["inventory-service"])]
pub struct ReserveInventory {
    pub order_id: String,
    pub sku: String,
    pub quantity: u32,
}

/// Give a reservation back.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "inventory.release", publisher = "order-fulfilment", consumers = ["inventory-service"])]
pub struct ReleaseInventory {
    pub order_id: String,
}

/// Charge the customer.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "payment.charge", publisher = "order-fulfilment", consumers = ["payment-service"])]
pub struct ChargePayment {
    pub order_id: String,
    pub amount_cents: u64,
}

/// Call a payment off (compensation): refund it if it was captured, void it if the gateway has
/// not answered yet.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "payment.void", publisher = "order-fulfilment", consumers = ["payment-service"])]
pub struct VoidPayment {
    pub order_id: String,
}

/// Ship the order.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "shipment.dispatch", publisher = "order-fulfilment", consumers = ["shipping-service"])]
pub struct DispatchShipment {
    pub order_id: String,
}

/// Mark the order complete.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "order.complete", publisher = "order-fulfilment", consumers = ["order-service"])]
pub struct CompleteOrder {
    pub order_id: String,
}

/// Cancel the order.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "order.cancel", publisher = "order-fulfilment", consumers = ["order-service"])]
pub struct CancelOrder {
    pub order_id: String,
    pub reason: String,
}

/// Why an aggregate refused a command.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

// ---- Aggregates ----

event_set! {
    #[derive(Debug, Clone)]
    pub enum OrderEvent {
        Placed(OrderPlaced),
        Completed(OrderCompleted),
        Cancelled(OrderCancelled),
    }
}

/// An order's life: placed, then completed or cancelled.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Order {
    pub placed: bool,
    pub outcome: Option<String>,
}

/// What an order can be asked.
pub enum OrderCommand {
    Place(OrderPlaced),
    Complete(CompleteOrder),
    Cancel(CancelOrder),
}

impl Aggregate for Order {
    const KIND: &'static str = "order";
    type Event = OrderEvent;
    type Command = OrderCommand;
    type Error = Refused;

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::Placed(_) => self.placed = true,
            OrderEvent::Completed(_) => self.outcome = Some("completed".into()),
            OrderEvent::Cancelled(e) => self.outcome = Some(e.reason.clone()),
        }
    }

    fn handle(&self, command: &OrderCommand) -> Result<Vec<OrderEvent>, Refused> {
        match command {
            OrderCommand::Place(_) if self.placed => Err(Refused("already placed".into())),
            OrderCommand::Place(e) => Ok(vec![e.clone().into()]),
            // Finishing twice (a redelivered command) changes nothing.
            _ if self.outcome.is_some() => Ok(vec![]),
            OrderCommand::Complete(c) => Ok(vec![OrderCompleted {
                order_id: c.order_id.clone(),
            }
            .into()]),
            OrderCommand::Cancel(c) => Ok(vec![OrderCancelled {
                order_id: c.order_id.clone(),
                reason: c.reason.clone(),
            }
            .into()]),
        }
    }
}

event_set! {
    #[derive(Debug, Clone)]
    pub enum ReservationEvent {
        Reserved(InventoryReserved),
        Released(InventoryReleased),
    }
}

/// Stock held for one order.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Reservation {
    pub reserved: bool,
    pub released: bool,
}

impl Aggregate for Reservation {
    const KIND: &'static str = "reservation";
    type Event = ReservationEvent;
    type Command = ReservationCommand;
    type Error = Refused;

    fn apply(&mut self, event: &ReservationEvent) {
        match event {
            ReservationEvent::Reserved(_) => self.reserved = true,
            ReservationEvent::Released(_) => self.released = true,
        }
    }

    fn handle(&self, command: &ReservationCommand) -> Result<Vec<ReservationEvent>, Refused> {
        Ok(match command {
            ReservationCommand::Reserve(c) if !self.reserved => vec![InventoryReserved {
                order_id: c.order_id.clone(),
                sku: c.sku.clone(),
                quantity: c.quantity,
            }
            .into()],
            ReservationCommand::Release(c) if self.reserved && !self.released => {
                vec![InventoryReleased {
                    order_id: c.order_id.clone(),
                }
                .into()]
            }
            _ => vec![],
        })
    }
}

/// What a reservation can be asked.
pub enum ReservationCommand {
    Reserve(ReserveInventory),
    Release(ReleaseInventory),
}

event_set! {
    #[derive(Debug, Clone)]
    pub enum PaymentEvent {
        Captured(PaymentCaptured),
        Declined(PaymentDeclined),
        Refunded(PaymentRefunded),
        Voided(PaymentVoided),
    }
}

/// One order's payment: decided once (captured, declined or voided); a capture can be refunded.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Payment {
    pub captured_cents: Option<u64>,
    pub declined: bool,
    pub voided: bool,
    pub refunded: bool,
}

impl Payment {
    /// Whether the customer's money is kept: captured and not given back.
    pub fn charged(&self) -> bool {
        self.captured_cents.is_some() && !self.refunded
    }

    fn decided(&self) -> bool {
        self.captured_cents.is_some() || self.declined || self.voided
    }
}

/// The gateway's answer to a charge.
pub enum GatewayAnswer {
    Captured,
    Declined,
}

/// What a payment can be asked.
pub enum PaymentCommand {
    /// Record the gateway's answer to a charge (ignored once the payment is decided).
    Charge(ChargePayment, GatewayAnswer),
    /// Call the payment off.
    Void(VoidPayment),
}

impl Aggregate for Payment {
    const KIND: &'static str = "payment";
    type Event = PaymentEvent;
    type Command = PaymentCommand;
    type Error = Refused;

    fn apply(&mut self, event: &PaymentEvent) {
        match event {
            PaymentEvent::Captured(e) => self.captured_cents = Some(e.amount_cents),
            PaymentEvent::Declined(_) => self.declined = true,
            PaymentEvent::Refunded(_) => self.refunded = true,
            PaymentEvent::Voided(_) => self.voided = true,
        }
    }

    fn handle(&self, command: &PaymentCommand) -> Result<Vec<PaymentEvent>, Refused> {
        Ok(match command {
            // A redelivered charge, or an answer after the payment was voided: no money moves.
            PaymentCommand::Charge(..) if self.decided() => vec![],
            PaymentCommand::Charge(c, GatewayAnswer::Captured) => vec![PaymentCaptured {
                order_id: c.order_id.clone(),
                amount_cents: c.amount_cents,
            }
            .into()],
            PaymentCommand::Charge(c, GatewayAnswer::Declined) => vec![PaymentDeclined {
                order_id: c.order_id.clone(),
                reason: "card declined".into(),
            }
            .into()],
            PaymentCommand::Void(v) => match self.captured_cents {
                Some(cents) if !self.refunded => vec![PaymentRefunded {
                    order_id: v.order_id.clone(),
                    amount_cents: cents,
                }
                .into()],
                None if !self.decided() => vec![PaymentVoided {
                    order_id: v.order_id.clone(),
                }
                .into()],
                _ => vec![],
            },
        })
    }
}

event_set! {
    #[derive(Debug, Clone)]
    pub enum ShipmentEvent { Dispatched(ShipmentDispatched) }
}

/// One order's shipment.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Shipment {
    pub dispatched: bool,
}

impl Aggregate for Shipment {
    const KIND: &'static str = "shipment";
    type Event = ShipmentEvent;
    type Command = DispatchShipment;
    type Error = Refused;

    fn apply(&mut self, _: &ShipmentEvent) {
        self.dispatched = true;
    }

    fn handle(&self, c: &DispatchShipment) -> Result<Vec<ShipmentEvent>, Refused> {
        if self.dispatched {
            return Ok(vec![]);
        }
        Ok(vec![ShipmentDispatched {
            order_id: c.order_id.clone(),
            tracking: format!("TRK-{}", c.order_id),
        }
        .into()])
    }
}

// ---- The saga ----

event_set! {
    #[derive(Debug, Clone)]
    pub enum FulfilmentEvent {
        Placed(OrderPlaced),
        Reserved(InventoryReserved),
        Captured(PaymentCaptured),
        Declined(PaymentDeclined),
        Dispatched(ShipmentDispatched),
    }
}

/// How long the saga waits for the payment service (process-wide; `--payment-timeout-ms`).
static PAYMENT_TIMEOUT_MS: AtomicU64 = AtomicU64::new(2000);

/// Set how long the saga waits for a payment.
pub fn set_payment_timeout(timeout: Duration) {
    PAYMENT_TIMEOUT_MS.store(timeout.as_millis() as u64, Ordering::Relaxed);
}

/// How long the saga waits for a payment.
pub fn payment_timeout() -> Duration {
    Duration::from_millis(PAYMENT_TIMEOUT_MS.load(Ordering::Relaxed))
}

/// One order's fulfilment: reserve stock, charge, ship, complete; a declined payment releases
/// the stock and cancels the order; an overdue one is also voided (refunded if it comes late).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Fulfilment {
    pub order_id: String,
    pub amount_cents: u64,
    pub step: String,
}

/// The payment did not answer in time.
#[derive(Debug, Serialize, Deserialize)]
pub struct PaymentOverdue;

impl Saga for Fulfilment {
    const NAME: &'static str = "order-fulfilment";
    type Event = FulfilmentEvent;
    type Timeout = PaymentOverdue;

    fn correlate(event: &FulfilmentEvent) -> Option<String> {
        Some(
            match event {
                FulfilmentEvent::Placed(e) => &e.order_id,
                FulfilmentEvent::Reserved(e) => &e.order_id,
                FulfilmentEvent::Captured(e) => &e.order_id,
                FulfilmentEvent::Declined(e) => &e.order_id,
                FulfilmentEvent::Dispatched(e) => &e.order_id,
            }
            .clone(),
        )
    }

    fn starts(event: &FulfilmentEvent) -> bool {
        matches!(event, FulfilmentEvent::Placed(_))
    }

    fn handle(&mut self, event: &FulfilmentEvent, fx: &mut Effects<PaymentOverdue>) {
        let id = self.order_id.clone();
        match (self.step.as_str(), event) {
            ("", FulfilmentEvent::Placed(e)) => {
                self.order_id = e.order_id.clone();
                self.amount_cents = e.amount_cents;
                self.step = "reserving".into();
                fx.send(&ReserveInventory {
                    order_id: e.order_id.clone(),
                    sku: e.sku.clone(),
                    quantity: e.quantity,
                });
            }
            ("reserving", FulfilmentEvent::Reserved(_)) => {
                self.step = "awaiting_payment".into();
                fx.on_compensate(&ReleaseInventory {
                    order_id: id.clone(),
                });
                fx.send(&ChargePayment {
                    order_id: id,
                    amount_cents: self.amount_cents,
                });
                fx.schedule("payment", payment_timeout(), PaymentOverdue);
            }
            ("awaiting_payment", FulfilmentEvent::Captured(_)) => {
                self.step = "shipping".into();
                fx.cancel("payment");
                fx.send(&DispatchShipment { order_id: id });
            }
            ("awaiting_payment", FulfilmentEvent::Declined(_)) => {
                self.step = "compensated".into();
                fx.send(&CancelOrder {
                    order_id: id,
                    reason: "payment_declined".into(),
                });
                fx.compensate();
            }
            ("shipping", FulfilmentEvent::Dispatched(_)) => {
                self.step = "completed".into();
                fx.send(&CompleteOrder { order_id: id });
                fx.complete();
            }
            // A redelivered message changes nothing; a payment answering after the timeout
            // finds the instance finished (the void sent then refunds or voids it).
            _ => {}
        }
    }

    fn on_timeout(&mut self, _: PaymentOverdue, fx: &mut Effects<PaymentOverdue>) {
        if self.step != "awaiting_payment" {
            return;
        }
        self.step = "timed_out".into();
        // The gateway may still answer: the void turns a late capture into a refund, or makes
        // the payment refuse an answer that has not come yet.
        fx.send(&VoidPayment {
            order_id: self.order_id.clone(),
        });
        fx.send(&CancelOrder {
            order_id: self.order_id.clone(),
            reason: "payment_timeout".into(),
        });
        fx.compensate();
    }

    fn state_name(&self) -> String {
        self.step.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge() -> ChargePayment {
        ChargePayment {
            order_id: "o-1".into(),
            amount_cents: 500,
        }
    }

    fn void() -> PaymentCommand {
        PaymentCommand::Void(VoidPayment {
            order_id: "o-1".into(),
        })
    }

    fn run(payment: &mut Payment, command: PaymentCommand) -> Vec<PaymentEvent> {
        let events = payment.handle(&command).unwrap();
        for e in &events {
            payment.apply(e);
        }
        events
    }

    #[test]
    fn a_void_after_a_capture_refunds_it_once() {
        let mut p = Payment::default();
        run(
            &mut p,
            PaymentCommand::Charge(charge(), GatewayAnswer::Captured),
        );
        assert!(p.charged());
        let refund = run(&mut p, void());
        assert!(matches!(&refund[..], [PaymentEvent::Refunded(r)] if r.amount_cents == 500));
        assert!(!p.charged());
        assert!(run(&mut p, void()).is_empty(), "a redelivered void");
    }

    #[test]
    fn an_answer_after_a_void_takes_no_money() {
        let mut p = Payment::default();
        assert!(matches!(
            &run(&mut p, void())[..],
            [PaymentEvent::Voided(_)]
        ));
        assert!(run(
            &mut p,
            PaymentCommand::Charge(charge(), GatewayAnswer::Captured)
        )
        .is_empty());
        assert!(!p.charged());
    }

    #[test]
    fn a_void_of_a_declined_payment_changes_nothing() {
        let mut p = Payment::default();
        run(
            &mut p,
            PaymentCommand::Charge(charge(), GatewayAnswer::Declined),
        );
        assert!(run(&mut p, void()).is_empty());
        assert!(!p.charged());
    }
}
