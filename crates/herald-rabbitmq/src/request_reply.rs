//! Request/reply over RabbitMQ direct reply-to (`amq.rabbitmq.reply-to`).
//!
//! The requester consumes the pseudo-queue `amq.rabbitmq.reply-to` (no-ack) on one channel and
//! publishes requests on that same channel with `reply_to = amq.rabbitmq.reply-to`; the broker
//! rewrites it to a per-channel address. The responder publishes its reply to the default
//! exchange with that address as routing key ([`RabbitTransport::reply`]). Replies are matched to
//! requests by `causation_id` (the reply is caused by the request) and bounded by a timeout. No
//! queue is declared and nothing is stored: a reply nobody waits for any more is dropped.
//!
//! [`RabbitTransport::reply`]: super::RabbitTransport::reply

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amqprs::callbacks::ChannelCallback;
use amqprs::channel::{BasicConsumeArguments, BasicPublishArguments, Channel};
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, Nack, Return};
use async_trait::async_trait;
use tokio::sync::oneshot;

use super::config::CloudEventsHeaders;
use super::properties::{from_message, to_properties};
use herald::envelope::Envelope;
use herald::error::{Error, Result};

/// The pseudo-queue of direct reply-to.
pub(crate) const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Result<Envelope>>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct ReturnsCallback(Waiters);

#[async_trait]
impl ChannelCallback for ReturnsCallback {
    async fn close(
        &mut self,
        _: &Channel,
        close: CloseChannel,
    ) -> std::result::Result<(), amqprs::error::Error> {
        tracing::warn!(code = close.reply_code(), reason = %close.reply_text(), "the broker closed the request/reply channel");
        Ok(())
    }
    async fn cancel(
        &mut self,
        _: &Channel,
        _: Cancel,
    ) -> std::result::Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn flow(
        &mut self,
        _: &Channel,
        active: bool,
    ) -> std::result::Result<bool, amqprs::error::Error> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &Channel, _: Ack) {}
    async fn publish_nack(&mut self, _: &Channel, _: Nack) {}
    async fn publish_return(
        &mut self,
        _: &Channel,
        ret: Return,
        props: BasicProperties,
        _: Vec<u8>,
    ) {
        let Some(id) = props.message_id() else { return };
        if let Some(w) = lock(&self.0).remove(id) {
            let _ = w.send(Err(Error::Unroutable {
                exchange: ret.exchange().clone(),
                routing_key: ret.routing_key().clone(),
            }));
        }
    }
}

/// One requester channel with its reply consumer.
pub(crate) struct Requester {
    channel: Channel,
    generation: u64,
    waiters: Waiters,
}

impl Requester {
    /// Open the channel and start consuming replies.
    pub async fn open(conn: &amqprs::connection::Connection, generation: u64) -> Result<Arc<Self>> {
        let channel = conn.open_channel(None).await.map_err(|e| {
            Error::transport(
                "rabbitmq",
                format!("could not open the request/reply channel: {e}"),
            )
        })?;
        let waiters: Waiters = Arc::new(Mutex::new(HashMap::new()));
        channel
            .register_callback(ReturnsCallback(waiters.clone()))
            .await
            .map_err(|e| Error::transport("rabbitmq", e))?;
        let mut args = BasicConsumeArguments::new(DIRECT_REPLY_TO, "");
        args.no_ack = true;
        let (_tag, mut rx) = channel.basic_consume_rx(args).await.map_err(|e| {
            Error::transport(
                "rabbitmq",
                format!("consuming {DIRECT_REPLY_TO} failed (needs RabbitMQ 3.4+): {e}"),
            )
        })?;
        let w = waiters.clone();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                let (Some(d), Some(props), Some(body)) = (m.deliver, m.basic_properties, m.content)
                else {
                    continue;
                };
                let (reply, _) = from_message(d.routing_key(), &props, body);
                let Some(key) = reply.causation_id.clone() else {
                    continue;
                };
                if let Some(waiter) = lock(&w).remove(&key) {
                    let _ = waiter.send(Ok(reply));
                }
            }
            // Channel gone: fail whoever still waits so they do not sit out their timeout.
            for (_, waiter) in lock(&w).drain() {
                let _ = waiter.send(Err(Error::transport(
                    "rabbitmq",
                    "the connection was lost while waiting for a reply; send the request again",
                )));
            }
        });
        Ok(Arc::new(Requester {
            channel,
            generation,
            waiters,
        }))
    }

    /// Whether this requester still works on connection `generation`.
    pub fn usable(&self, generation: u64) -> bool {
        self.generation == generation && self.channel.is_open()
    }

    /// Publish `request` and wait for its reply.
    pub async fn request(
        &self,
        exchange: &str,
        request: &Envelope,
        timeout: Duration,
        cloudevents: CloudEventsHeaders,
    ) -> Result<Envelope> {
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).insert(request.id.clone(), tx);
        let mut props = to_properties(request, false, cloudevents);
        props.with_reply_to(DIRECT_REPLY_TO);
        let mut args = BasicPublishArguments::new(exchange, &request.routing_key);
        args.mandatory(true);
        if let Err(e) = self
            .channel
            .basic_publish(props, request.body.to_vec(), args)
            .await
        {
            lock(&self.waiters).remove(&request.id);
            return Err(Error::transport(
                "rabbitmq",
                format!("sending the request failed: {e}"),
            ));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::transport(
                "rabbitmq",
                "the request/reply channel closed",
            )),
            Err(_) => {
                lock(&self.waiters).remove(&request.id);
                Err(Error::Timeout(timeout))
            }
        }
    }
}
