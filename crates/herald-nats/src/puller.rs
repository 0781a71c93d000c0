//! Pulling from a JetStream consumer with exact accounting of what was asked for.
//!
//! A pull request asks the server for up to N messages on an inbox; they arrive one by one,
//! and a request that ends early (it expired, the server stepped down) ends with a status
//! message saying how many it still owed (`Nats-Pending-Messages`). This keeps the count of
//! messages asked for and not yet received (`outstanding`) from those alone, so the caller can
//! keep `outstanding + unsettled <= prefetch` exactly: a consumer instance never holds more
//! than its prefetch, and with prefetch 1 instances of a service share a queue fairly.
//! (async-nats's own pull stream counts a request as open until its local send completes,
//! which can come after the messages it asked for; with a batch of 1 that left nothing
//! asked for and the consumer waiting for the request's expiry.)
//!
//! A server that stops answering (restarted, or the connection was lost) forgets the requests:
//! a reconnect (at once: the puller is woken by it), or no message and no heartbeat for two
//! heartbeat intervals while something is outstanding, resets the count so the caller asks
//! again. Waiting out a request's expiry instead left a consumer idle for many seconds after
//! every failover.

use std::pin::Pin;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::BatchConfig;
use async_nats::{Client, StatusCode, Subject, Subscriber};
use futures::StreamExt;
use herald::error::{Error, Result};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

/// Counts the client's (re)connections; every puller is woken when it moves.
pub(crate) type Reconnects = watch::Sender<u64>;

const PENDING_MESSAGES: &str = "Nats-Pending-Messages";

/// What [`Puller::next`] found.
pub(crate) enum Pulled {
    /// A message of the consumer's.
    Message(async_nats::Message),
    /// Less is on its way than was asked for (a request expired or ended, the server went
    /// silent, the client reconnected): ask again.
    Reset,
    /// The consumer is gone (deleted, or its stream was): declare it again.
    Gone(String),
}

/// One consumer's pull requests and the inbox their messages arrive on.
pub(crate) struct Puller {
    client: Client,
    subject: String,
    inbox: Subject,
    sub: Subscriber,
    outstanding: usize,
    heartbeat: Duration,
    expires: Duration,
    reconnects: watch::Receiver<u64>,
    /// When the server was last heard from (a message, a status) or last asked.
    heard: Instant,
    /// Fires once `heard` is two heartbeats old. Kept armed across calls rather than made anew
    /// for every message: it is pushed back only when it fires early.
    silence: Pin<Box<Sleep>>,
}

impl Puller {
    /// Pull from `consumer` of `stream`.
    pub(crate) async fn open(
        client: &Client,
        stream: &str,
        consumer: &str,
        reconnects: &Reconnects,
        expires: Duration,
    ) -> Result<Self> {
        let inbox = client.new_inbox();
        let sub = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| Error::transport("nats", format!("subscribing to an inbox: {e}")))?;
        Ok(Puller {
            client: client.clone(),
            subject: format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"),
            inbox: Subject::from(inbox),
            sub,
            outstanding: 0,
            // The server wants heartbeats well inside a request's life.
            heartbeat: (expires / 2).min(Duration::from_secs(2)),
            expires,
            reconnects: reconnects.subscribe(),
            heard: Instant::now(),
            silence: Box::pin(tokio::time::sleep(Duration::ZERO)),
        })
    }

    /// Messages asked for and not yet received.
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Ask for `n` more messages.
    pub(crate) async fn ask(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let request = BatchConfig {
            batch: n,
            expires: Some(self.expires),
            idle_heartbeat: self.heartbeat,
            ..Default::default()
        };
        let body = serde_json::to_vec(&request)
            .map_err(|e| Error::transport("nats", format!("encoding a pull request: {e}")))?;
        self.client
            .publish_with_reply(self.subject.clone(), self.inbox.clone(), body.into())
            .await
            .map_err(|e| Error::transport("nats", format!("sending a pull request: {e}")))?;
        self.outstanding += n;
        self.heard = Instant::now();
        Ok(())
    }

    /// The next message, or what the caller must do instead. `None` once the subscription ended.
    pub(crate) async fn next(&mut self) -> Option<Pulled> {
        loop {
            if self.reconnects.has_changed().unwrap_or(false) {
                self.reconnects.borrow_and_update();
                if self.outstanding > 0 {
                    self.outstanding = 0;
                    return Some(Pulled::Reset);
                }
            }
            let watching = self.outstanding > 0;
            let message = tokio::select! {
                // The sender lives as long as the transport that owns this puller.
                changed = self.reconnects.changed() => {
                    changed.ok()?;
                    continue;
                }
                m = self.sub.next() => m?,
                _ = self.silence.as_mut(), if watching => {
                    let due = self.heard + self.heartbeat * 2;
                    if due > Instant::now() {
                        // Heard from since it was set: wait until two heartbeats after that.
                        self.silence.as_mut().reset(due);
                        continue;
                    }
                    self.outstanding = 0;
                    return Some(Pulled::Reset);
                }
            };
            self.heard = Instant::now();
            match message.status {
                None | Some(StatusCode::OK) => {
                    self.outstanding = self.outstanding.saturating_sub(1);
                    return Some(Pulled::Message(message));
                }
                Some(StatusCode::IDLE_HEARTBEAT) => continue,
                Some(StatusCode::TIMEOUT) | Some(StatusCode::REQUEST_TERMINATED) => {
                    let description = message.description.clone().unwrap_or_default();
                    if description.contains("Consumer Deleted")
                        || description.contains("Consumer is push based")
                    {
                        self.outstanding = 0;
                        return Some(Pulled::Gone(description));
                    }
                    // A request ended owing this many: they will not come.
                    let owed = message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(PENDING_MESSAGES))
                        .and_then(|v| v.as_str().parse::<usize>().ok())
                        .unwrap_or(self.outstanding);
                    self.outstanding = self.outstanding.saturating_sub(owed);
                    // The caller asks again for what will not come. (Waiting on instead left
                    // a consumer whose request expired, or was ended by a leader change,
                    // asking for nothing, and idle for good.)
                    return Some(Pulled::Reset);
                }
                Some(StatusCode::NO_RESPONDERS) => {
                    self.outstanding = 0;
                    return Some(Pulled::Gone("no responders: the stream is gone".into()));
                }
                Some(StatusCode::NOT_FOUND) => {}
                Some(other) => {
                    tracing::debug!(status = %other, description = ?message.description, "pull status");
                    if other.is_client_error() || other.is_server_error() {
                        self.outstanding = 0;
                        return Some(Pulled::Reset);
                    }
                }
            }
        }
    }
}
