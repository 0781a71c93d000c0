//! Typed request/reply: [`Bus::request`](super::Bus::request) publishes a request event and
//! waits, up to a timeout, for the one reply a handler sends with
//! [`Context::reply`](crate::Context::reply).
//!
//! A transport with its own path (RabbitMQ's direct reply-to, capability
//! `native_request_reply`) carries both ways itself. On every other transport the bus uses a
//! reply queue of its own: on the first request it declares a temporary queue
//! `<service>.replies.<id>` bound to `herald.reply.<id>` on its exchange and consumes it;
//! requests carry that key and exchange in `herald_reply_to` / `herald_reply_exchange`, the
//! responder publishes its reply there, and replies are matched to waiting requests by their
//! causation id (the request's id). Nothing else is needed from the transport, so any later
//! transport has request/reply without code of its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use serde::de::DeserializeOwned;

use super::Bus;
use crate::envelope::{header, Envelope};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::publisher::Publisher;
use crate::topology::{QueueSpec, Topology};
use crate::transport::{Outcome, Transport};

impl Bus {
    /// Send `request` and wait for its reply, up to the bus's request timeout
    /// (`request_timeout_ms`, 5 s by default): the responder is a handler of `Req` that answers
    /// with [`Context::reply`](crate::Context::reply). Works on every transport: through the transport's own path
    /// where it has one (RabbitMQ's direct reply-to), else through a reply queue of this bus.
    /// Fails with [`Error::Timeout`] when no reply comes, [`Error::Unroutable`] when no
    /// responder's queue receives the request, and [`Error::RequestFailed`] when the responder
    /// answered with [`Context::reply_error`](crate::Context::reply_error) or the reply is not a `Resp`. See
    /// [`Context::reply`](crate::Context::reply) for an example.
    pub async fn request<Req, Resp>(&self, request: &Req) -> Result<Resp>
    where
        Req: Event,
        Resp: DeserializeOwned,
    {
        self.request_with(request, RequestOptions::default()).await
    }

    /// [`request`](Self::request) with a timeout or exchange of its own.
    pub async fn request_with<Req, Resp>(
        &self,
        request: &Req,
        options: RequestOptions,
    ) -> Result<Resp>
    where
        Req: Event,
        Resp: DeserializeOwned,
    {
        let inner = &self.inner;
        if inner.shutdown.is_cancelled() {
            return Err(Error::Closed);
        }
        let timeout = options
            .timeout
            .unwrap_or(Duration::from_millis(inner.config.request_timeout_ms));
        let exchange = inner
            .publisher
            .resolve(options.exchange.as_deref().or(Req::EXCHANGE))
            .into_owned();
        let envelope = crate::Envelope::for_event(request, &inner.config.service)?;
        let reply = match inner.transport.request_reply() {
            Some(native) => {
                let reply = native.request(&exchange, &envelope, timeout).await?;
                if let Some(observer) = &inner.observer {
                    observer.published(&exchange, std::slice::from_ref(&envelope));
                }
                reply
            }
            None => {
                inner
                    .requester
                    .request(
                        &inner.publisher,
                        &exchange,
                        envelope,
                        timeout,
                        &inner.shutdown,
                    )
                    .await?
            }
        };
        decode_reply(&reply)
    }
}

/// Per-call options for [`Bus::request_with`](super::Bus::request_with).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestOptions {
    pub(crate) timeout: Option<Duration>,
    pub(crate) exchange: Option<String>,
}

impl RequestOptions {
    /// The bus's request timeout (`request_timeout_ms`), the request event's exchange.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wait at most this long for the reply.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Send the request to this exchange.
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = Some(exchange.into());
        self
    }
}

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Envelope>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One bus's side of the generic path: its reply queue and the requests waiting for replies.
pub(crate) struct Requester {
    /// `<service>.replies.<id>`.
    queue: String,
    /// `herald.reply.<id>`: the routing key replies are published with.
    key: String,
    waiters: Waiters,
    /// The reply queue's consumer, once the first request started it.
    task: Mutex<Option<JoinHandle<()>>>,
    /// Held while the reply queue is being declared, so it is declared once.
    starting: tokio::sync::Mutex<bool>,
}

impl Requester {
    pub fn new(service: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Requester {
            queue: format!("{service}.replies.{}", &id[..12]),
            key: format!("herald.reply.{id}"),
            waiters: Waiters::default(),
            task: Mutex::new(None),
            starting: tokio::sync::Mutex::new(false),
        }
    }

    /// The reply queue's consumer, for shutdown to wait on.
    pub fn take_task(&self) -> Option<JoinHandle<()>> {
        lock(&self.task).take()
    }

    /// Send `request` to `exchange` (its full name) through the reply queue and wait for its
    /// reply.
    pub async fn request(
        &self,
        publisher: &Publisher,
        exchange: &str,
        mut request: Envelope,
        timeout: Duration,
        shutdown: &CancellationToken,
    ) -> Result<Envelope> {
        self.start(publisher.transport(), publisher.exchange(), shutdown)
            .await?;
        request
            .headers
            .insert(header::REPLY_TO.into(), self.key.clone());
        request
            .headers
            .insert(header::REPLY_EXCHANGE.into(), publisher.exchange().into());
        let id = request.id.clone();
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).insert(id.clone(), tx);
        let sent = publisher.send(Some(exchange), vec![request], false).await;
        if let Err(e) = sent {
            lock(&self.waiters).remove(&id);
            return Err(e);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => {
                lock(&self.waiters).remove(&id);
                Err(Error::Timeout(timeout))
            }
        }
    }

    /// Declare the reply queue and start consuming it, once.
    async fn start(
        &self,
        transport: &Arc<dyn Transport>,
        exchange: &str,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let mut started = self.starting.lock().await;
        if *started {
            return Ok(());
        }
        if shutdown.is_cancelled() {
            return Err(Error::Closed);
        }
        let mut spec = QueueSpec::new(&self.queue, &self.key);
        spec.auto_delete = true;
        let mut topology = Topology::new(exchange);
        topology.add_queue(spec.clone());
        transport.apply_topology(&topology).await?;
        *lock(&self.task) = Some(tokio::spawn(take_replies(
            transport.clone(),
            spec,
            self.waiters.clone(),
            shutdown.clone(),
        )));
        *started = true;
        Ok(())
    }
}

/// Consume the reply queue until shutdown, handing each reply to the request waiting for it
/// (a reply nobody waits for any more is dropped). Consumes again if the transport ends the
/// stream.
async fn take_replies(
    transport: Arc<dyn Transport>,
    spec: QueueSpec,
    waiters: Waiters,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        let stop = shutdown.child_token();
        let Some(mut rx) = super::consumer::open(&*transport, &spec, 256, &stop, &shutdown).await
        else {
            break;
        };
        loop {
            let delivery = tokio::select! {
                _ = shutdown.cancelled() => break,
                d = rx.recv() => match d { Some(d) => d, None => break },
            };
            let waiter = delivery
                .envelope
                .causation_id
                .as_ref()
                .and_then(|id| lock(&waiters).remove(id));
            let (envelope, settler) = delivery.into_parts();
            if let Err(e) = settler.settle(&envelope, Outcome::Ack).await {
                tracing::debug!(error = %e, "acking a reply failed");
            }
            match waiter {
                Some(w) => {
                    let _ = w.send(envelope);
                }
                None => {
                    tracing::debug!(id = %envelope.id, "a reply nobody waits for any more was dropped")
                }
            }
        }
        rx.close();
        while let Some(d) = rx.recv().await {
            let (envelope, settler) = d.into_parts();
            let _ = settler.settle(&envelope, Outcome::Ack).await;
        }
    }
}

/// The reply's body as `Resp`, or the responder's error.
pub(crate) fn decode_reply<Resp: serde::de::DeserializeOwned>(reply: &Envelope) -> Result<Resp> {
    if let Some(error) = reply.headers.get(header::REPLY_ERROR) {
        return Err(Error::RequestFailed(format!("the responder said: {error}")));
    }
    crate::handler::decode_json(&reply.body).map_err(|e| {
        Error::RequestFailed(format!(
            "the reply is not a {}: {e}",
            std::any::type_name::<Resp>()
        ))
    })
}
