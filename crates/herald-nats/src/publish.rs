//! Publishing with durable acceptance: every message waits for its JetStream ack. A publish
//! whose ack does not come (a connection lost, a leader election) is sent again with the same
//! `Nats-Msg-Id` until `outage_timeout` has passed, and the server stores it once.

use std::time::{Duration, Instant};

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::{self, message::PublishMessage};
use async_nats::HeaderMap;
use bytes::Bytes;
use herald::error::{Error, Result};

/// One message to store: its subject, headers (with its `Nats-Msg-Id`) and body.
pub(crate) struct Outgoing {
    pub subject: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What a publish to a subject no stream takes means to the caller.
pub(crate) enum NoStream {
    /// The stream is moving (a restart, an election): try again.
    Retry,
    /// Nothing is bound: the message may be dropped.
    Drop,
    /// Nothing is bound and the caller needs a route.
    Fail(Error),
}

/// How a failed attempt ends.
enum Failed {
    /// Worth sending again (no ack in time, connection lost).
    Again(String),
    /// No stream takes the subject.
    NoStream,
    /// The server refused it for good.
    Refused(String),
}

fn classify(e: &jetstream::context::PublishError) -> Failed {
    match e.kind() {
        PublishErrorKind::StreamNotFound => Failed::NoStream,
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::MaxAckPending => Failed::Again(e.to_string()),
        _ => {
            let text = e.to_string();
            // Cluster hiccups the server reports as errors: worth another try.
            if text.contains("no leader")
                || text.contains("unavailable")
                || text.contains("timeout")
            {
                Failed::Again(text)
            } else {
                Failed::Refused(text)
            }
        }
    }
}

/// Send `m` and wait for its ack, keeping no copy: whether it was stored. A message that was
/// not (any failure) is for [`store_all`] to send again, from a copy of its own.
pub(crate) async fn store_once(js: &jetstream::Context, m: Outgoing) -> bool {
    let publish = PublishMessage::build().payload(m.body).headers(m.headers);
    match js.send_publish(m.subject, publish).await {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    }
}

/// Store every message, in order of sending, waiting for each ack: what is not yet stored is
/// sent again, round after round, until it is or `timeout` has passed. `no_stream` says what a
/// missing stream means for a message. (A publish tries [`store_once`] first: this keeps a copy
/// of each message for the next round.)
pub(crate) async fn store_all(
    js: &jetstream::Context,
    batch: Vec<Outgoing>,
    timeout: Duration,
    no_stream: impl Fn(&Outgoing) -> NoStream,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut pending = batch;
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut acks: Vec<(Outgoing, Option<PublishAckFuture>, Option<Failed>)> =
            Vec::with_capacity(pending.len());
        for m in pending {
            let publish = PublishMessage::build()
                .payload(m.body.clone())
                .headers(m.headers.clone());
            match js.send_publish(m.subject.clone(), publish).await {
                Ok(ack) => acks.push((m, Some(ack), None)),
                Err(e) => {
                    let f = classify(&e);
                    acks.push((m, None, Some(f)));
                }
            }
        }
        // Wait for every ack at once: each times out on its own clock, so a batch sent into an
        // outage costs one timeout, not one per message.
        let results =
            futures::future::join_all(acks.into_iter().map(|(m, ack, failed)| async move {
                let failed = match (ack, failed) {
                    (Some(ack), _) => match ack.await {
                        Ok(_) => None,
                        Err(e) => Some(classify(&e)),
                    },
                    (None, f) => f,
                };
                (m, failed)
            }))
            .await;
        let mut again = Vec::new();
        let mut last = String::new();
        for (m, failed) in results {
            let Some(failed) = failed else { continue };
            match failed {
                Failed::Again(reason) => {
                    last = reason;
                    again.push(m);
                }
                Failed::NoStream => match no_stream(&m) {
                    NoStream::Fail(e) => return Err(e),
                    NoStream::Drop => {}
                    NoStream::Retry => {
                        last = "no stream answered (it may be moving to another server)".into();
                        again.push(m);
                    }
                },
                Failed::Refused(reason) => return Err(Error::Rejected(reason)),
            }
        }
        if again.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Unavailable {
                waited: timeout,
                reason: format!(
                    "{} message(s) not confirmed by JetStream: {last}",
                    again.len()
                ),
            });
        }
        tracing::debug!(left = again.len(), reason = %last, "publishing again");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
        pending = again;
    }
}
