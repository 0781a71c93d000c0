//! Producing: every record is enqueued in librdkafka at once (a publish call's whole batch is
//! in flight together) and the call returns when the broker acknowledged every one (acks=all).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald::envelope::Envelope;
use herald::error::{Error, Result};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::statistics::Statistics;
use rdkafka::util::Timeout;
use rdkafka::ClientContext;

use crate::config::KafkaConfig;
use crate::wire;

/// Whether librdkafka has a broker connection up, from its statistics (every second) and
/// its "all brokers down" error (at once).
#[derive(Default)]
pub(crate) struct Health {
    down: Arc<AtomicBool>,
}

impl ClientContext for Health {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        crate::admin::log(level, fac, message);
    }

    fn stats(&self, statistics: Statistics) {
        let up = statistics.brokers.values().any(|b| b.state == "UP");
        self.down.store(!up, Ordering::Relaxed);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.down.store(true, Ordering::Relaxed);
        }
        tracing::debug!(%error, reason, "kafka client error");
    }
}

/// The transport's producer (one librdkafka producer, shared by every publish).
pub(crate) struct Producer {
    inner: FutureProducer<Health>,
    down: Arc<AtomicBool>,
    outage_timeout: Duration,
    /// Every CloudEvents attribute as a header (`?cloudevents=full`), not the compact form.
    full_headers: bool,
}

impl Producer {
    pub fn new(cfg: &KafkaConfig) -> Result<Self> {
        let health = Health::default();
        let down = health.down.clone();
        let inner = cfg
            .producer()
            .set("statistics.interval.ms", "1000")
            .create_with_context(health)
            .map_err(|e| Error::transport("kafka", format!("cannot create the producer: {e}")))?;
        Ok(Producer {
            inner,
            down,
            outage_timeout: cfg.outage_timeout,
            full_headers: cfg.full_headers,
        })
    }

    /// Enqueue one record, waiting while librdkafka's queue is full.
    async fn enqueue<'a>(&self, mut record: FutureRecord<'a, str, [u8]>) -> Result<DeliveryFuture> {
        let mut waited = Duration::ZERO;
        loop {
            match self.inner.send_result(record) {
                Ok(f) => return Ok(f),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    if waited > self.outage_timeout {
                        return Err(Error::Unavailable {
                            waited,
                            reason: "the producer's queue stayed full".into(),
                        });
                    }
                    record = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    waited += Duration::from_millis(5);
                }
                Err((e, _)) => return Err(produce_error(e)),
            }
        }
    }

    /// Produce one record and wait for the broker's acknowledgement.
    pub async fn send(&self, record: FutureRecord<'_, str, [u8]>) -> Result<()> {
        settled(self.enqueue(record).await?).await
    }

    /// Produce `envelopes` to `topic` (each with `not_before` on a retry topic), all in flight
    /// at once; returns once every one is acknowledged.
    pub async fn publish(
        &self,
        topic: &str,
        envelopes: &[Envelope],
        not_before: Option<i64>,
    ) -> Result<()> {
        if let [one] = envelopes {
            let r = record(topic, one, not_before, self.full_headers);
            return settled(self.enqueue(r).await?).await;
        }
        let mut pending = Vec::with_capacity(envelopes.len());
        for e in envelopes {
            let r = record(topic, e, not_before, self.full_headers);
            pending.push(self.enqueue(r).await?);
        }
        let mut first_error = None;
        for f in pending {
            if let Err(e) = settled(f).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Whether a broker connection is up.
    pub fn is_connected(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }

    /// Wait (up to `within`) until everything enqueued is acknowledged.
    pub fn flush(&self, within: Duration) {
        let _ = self.inner.flush(Timeout::After(within));
    }
}

/// The record for `envelope` on `topic`.
fn record<'a>(
    topic: &'a str,
    envelope: &'a Envelope,
    not_before: Option<i64>,
    full_headers: bool,
) -> FutureRecord<'a, str, [u8]> {
    FutureRecord::to(topic)
        .key(wire::key(envelope))
        .payload(&envelope.body[..])
        .headers(wire::headers(envelope, not_before, full_headers))
}

async fn settled(f: DeliveryFuture) -> Result<()> {
    match f.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(produce_error(e)),
        Err(_) => Err(Error::transport(
            "kafka",
            "the producer was closed before the broker acknowledged the message",
        )),
    }
}

fn produce_error(e: KafkaError) -> Error {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageTimedOut) => Error::Unavailable {
            waited: Duration::ZERO,
            reason: format!("the broker did not acknowledge the message in time ({e})"),
        },
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => {
            Error::Rejected(format!("the broker refused the message as too large ({e})"))
        }
        _ => Error::transport("kafka", format!("producing failed: {e}")),
    }
}
