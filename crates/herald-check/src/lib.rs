//! # herald-check
//!
//! A history checker for Herald runs, in the spirit of Jepsen's: record what the broker
//! confirmed and what every service handled, wait until the run is quiescent, then judge it by
//! **distinct ids**, never by counters:
//!
//! - **lost**: confirmed by the broker, and neither handled nor dead-lettered by a service that
//!   must see it;
//! - **duplicated**: handled more than once (at-least-once delivery at work); effects are
//!   counted apart when the handler records them past an inbox;
//! - **reordered**: for services where Herald promises order (one consumer taking a queue in
//!   order), an event first handled after a later event of the same key.
//!
//! ```
//! use herald_check::History;
//!
//! let history = History::new(["notification-service"]);
//! let sent = history.now();
//! history.confirmed("evt-1", "user.registered", sent);     // the broker confirmed it
//! history.handled("notification-service", "evt-1", "user.registered", 1);
//! history.handled("notification-service", "evt-1", "user.registered", 1); // redelivered
//! let verdict = history.check();
//! assert_eq!((verdict.lost, verdict.duplicates), (0, 1));
//! ```
//!
//! Record handlings with [`History::recorder`] (a pipeline layer) or [`History::handled`],
//! dead letters with [`History::dead_lettered`] (read back from the broker), faults with
//! [`History::fault`]; wait with [`wait_for_quiescence`] before [`History::check`]. `herald demo`
//! and `herald chaos` print their RESULT lines from a [`Verdict`]; see
//! `docs/high-availability.md`.
#![warn(missing_docs)]

mod history;
mod publish;
mod quiescence;
mod recorder;
mod timeline;
mod verdict;

pub use history::{Fault, Handled, History, Published};
pub use publish::publish_until_confirmed;
pub use quiescence::{
    queue_activity, queue_names, transport_activity, wait_for_quiescence, Activity, Quiescence,
    QuiescenceOptions,
};
pub use recorder::{ordering_key, Recorder};
pub use timeline::{percentile, FaultReport};
pub use verdict::Verdict;
