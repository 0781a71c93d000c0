//! A hook that sees every publish and every delivery of one bus, from the moment a handler call
//! takes it to its settlement: what the test harness ([`crate::testing`]) records. Without one
//! installed the bus pays one branch per event.

use crate::envelope::Envelope;
use crate::transport::Outcome;

/// Told what a bus published, took and settled.
pub(crate) trait Observe: Send + Sync + 'static {
    /// `envelopes` were durably accepted on `exchange`.
    fn published(&self, exchange: &str, envelopes: &[Envelope]);

    /// A delivery from `queue` goes into the pipeline.
    fn taken(&self, queue: &str, envelope: &Envelope);

    /// A delivery from `queue` is about to be settled with `outcome`.
    fn settled(&self, queue: &str, envelope: &Envelope, outcome: &Outcome);
}
