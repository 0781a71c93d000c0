//! A test saga, shared by the saga tests and the saga process they kill: a booking reserves a
//! seat, then charges a card; a failed payment releases the seat (compensation); no answer by the
//! deadline times the booking out (and releases what was reserved).
#![allow(dead_code)]

use std::time::Duration;

use herald::Event;
use herald_es::event_set;
use herald_es::saga::{Effects, Saga};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "booking.requested")]
pub struct BookingRequested {
    pub booking_id: String,
    pub deadline_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "seat.reserved")]
pub struct SeatReserved {
    pub booking_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "payment.done")]
pub struct PaymentDone {
    pub booking_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "payment.failed")]
pub struct PaymentFailed {
    pub booking_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "booking.pinged")]
pub struct Pinged {
    pub booking_id: String,
}

// Commands the saga sends.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "seat.reserve")]
pub struct ReserveSeat {
    pub booking_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "seat.release")]
pub struct ReleaseSeat {
    pub booking_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "card.charge")]
pub struct ChargeCard {
    pub booking_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "booking.timed_out")]
pub struct BookingTimedOut {
    pub booking_id: String,
}

event_set! {
    #[derive(Debug, Clone)]
    pub enum BookingEvent {
        Requested(BookingRequested),
        Reserved(SeatReserved),
        Paid(PaymentDone),
        PaymentFailed(PaymentFailed),
        Pinged(Pinged),
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Booking {
    pub id: String,
    pub step: String,
    pub pings: u64,
    pub timeouts: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Deadline;

impl Saga for Booking {
    const NAME: &'static str = "booking";
    type Event = BookingEvent;
    type Timeout = Deadline;

    fn correlate(e: &BookingEvent) -> Option<String> {
        Some(
            match e {
                BookingEvent::Requested(e) => &e.booking_id,
                BookingEvent::Reserved(e) => &e.booking_id,
                BookingEvent::Paid(e) => &e.booking_id,
                BookingEvent::PaymentFailed(e) => &e.booking_id,
                BookingEvent::Pinged(e) => &e.booking_id,
            }
            .clone(),
        )
    }

    fn starts(e: &BookingEvent) -> bool {
        matches!(e, BookingEvent::Requested(_))
    }

    fn handle(&mut self, e: &BookingEvent, fx: &mut Effects<Deadline>) {
        match e {
            BookingEvent::Requested(r) => {
                self.id = r.booking_id.clone();
                self.step = "reserving".into();
                fx.send(&ReserveSeat {
                    booking_id: self.id.clone(),
                });
                fx.schedule("deadline", Duration::from_millis(r.deadline_ms), Deadline);
            }
            BookingEvent::Reserved(_) if self.step == "reserving" => {
                self.step = "charging".into();
                fx.on_compensate(&ReleaseSeat {
                    booking_id: self.id.clone(),
                });
                fx.send(&ChargeCard {
                    booking_id: self.id.clone(),
                });
            }
            BookingEvent::Paid(_) if self.step == "charging" => {
                self.step = "done".into();
                fx.complete();
            }
            BookingEvent::PaymentFailed(_) if self.step == "charging" => {
                self.step = "compensated".into();
                fx.compensate();
            }
            BookingEvent::Pinged(_) => {
                self.pings += 1;
                if self.step == "reserving" {
                    // No pending deadline: what a saga waiting on nothing looks like.
                    fx.cancel("deadline");
                }
            }
            // Late or out-of-turn messages change nothing.
            _ => {}
        }
    }

    fn on_timeout(&mut self, _: Deadline, fx: &mut Effects<Deadline>) {
        if let Ok(marker) = std::env::var("BOOKING_HANG_MARKER") {
            if !std::path::Path::new(&marker).exists() {
                // Firing, not yet committed: wait here to be killed.
                std::fs::write(&marker, b"firing").expect("write the marker");
                std::thread::sleep(Duration::from_secs(60));
            }
        }
        self.timeouts += 1;
        self.step = "timed_out".into();
        fx.send(&BookingTimedOut {
            booking_id: self.id.clone(),
        });
        fx.compensate();
    }

    fn state_name(&self) -> String {
        self.step.clone()
    }
}

pub fn envelope<E: Event>(e: &E) -> herald::Envelope {
    herald::Envelope::for_event(e, "booking-client").expect("encode")
}
