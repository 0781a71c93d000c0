//! Declaring a [`Topology`] on RabbitMQ.
//!
//! Per work queue `<q>` on exchange `<x>` (durable topic):
//! - `<q>`: classic or quorum ([`RabbitConfig::queue_kind`]: quorum on a cluster URL),
//!   `x-dead-letter-exchange = <x>.dlx` and `x-dead-letter-routing-key = <q>` so broker-expired
//!   and rejected messages reach the DLQ, plus `x-max-priority`, `x-message-ttl`,
//!   `x-max-length` with `x-overflow = reject-publish` when configured; bound to `<x>` with each
//!   pattern.
//! - `<q>.dlq`: the dead letters, bound to the direct exchange `<x>.dlx` with key `<q>`.
//! - `<q>.retry.<n>ms` per delay level (durable): `x-message-ttl = n`, dead-lettering through
//!   the default exchange back to `<q>` only, so levels never block each other.
//!
//! The dead-letter and retry queues are of the work queue's kind: on a cluster a classic queue
//! lives on one node, and a retry waiting there would be out of reach while that node is down.
//! Quorum retry queues dead-letter back *at least once* (`x-dead-letter-strategy`, which needs
//! `x-overflow = reject-publish`; RabbitMQ 3.10 or later, like message TTL on quorum queues):
//! the default, at most once, drops an expired retry when the work queue cannot take it at that
//! moment (its leader is moving). Quorum queues have no priorities (3.10 to 3.13), so a queue
//! with a max priority is classic.
//!
//! Declarations are idempotent. A queue that exists with other arguments makes the broker answer
//! `PRECONDITION_FAILED`; that becomes [`Error::TopologyConflict`] naming the differing argument.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use amqprs::callbacks::ChannelCallback;
use amqprs::channel::{
    Channel, ExchangeDeclareArguments, ExchangeDeleteArguments, QueueBindArguments,
    QueueDeclareArguments, QueueDeleteArguments,
};
use amqprs::connection::Connection;
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, FieldTable, FieldValue, Nack, Return};
use async_trait::async_trait;

use super::config::RabbitConfig;
use herald::error::{Error, Result};
use herald::topology::{dead_letter_exchange_name, QueueKind, QueueSpec, Topology};

/// Why the broker closed a channel: (reply code, reply text).
pub(crate) type CloseSlot = Arc<Mutex<Option<(u16, String)>>>;

/// A channel callback that remembers why the broker closed the channel.
pub(crate) struct RecordClose(pub CloseSlot);

#[async_trait]
impl ChannelCallback for RecordClose {
    async fn close(
        &mut self,
        _channel: &Channel,
        close: CloseChannel,
    ) -> std::result::Result<(), amqprs::error::Error> {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some((close.reply_code(), close.reply_text().clone()));
        }
        Ok(())
    }
    async fn cancel(
        &mut self,
        _channel: &Channel,
        _cancel: Cancel,
    ) -> std::result::Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn flow(
        &mut self,
        _channel: &Channel,
        active: bool,
    ) -> std::result::Result<bool, amqprs::error::Error> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _channel: &Channel, _ack: Ack) {}
    async fn publish_nack(&mut self, _channel: &Channel, _nack: Nack) {}
    async fn publish_return(
        &mut self,
        _channel: &Channel,
        _ret: Return,
        _basic_properties: BasicProperties,
        _content: Vec<u8>,
    ) {
    }
}

/// Open a channel whose close reason is recorded.
pub(crate) async fn open_channel(conn: &Connection) -> Result<(Channel, CloseSlot)> {
    let ch = conn
        .open_channel(None)
        .await
        .map_err(|e| Error::transport("rabbitmq", format!("could not open a channel: {e}")))?;
    let slot: CloseSlot = Arc::new(Mutex::new(None));
    ch.register_callback(RecordClose(slot.clone()))
        .await
        .map_err(|e| {
            Error::transport(
                "rabbitmq",
                format!("could not register a channel callback: {e}"),
            )
        })?;
    Ok((ch, slot))
}

/// Turn an amqprs error into a Herald one, using the broker's close reason when there is one.
pub(crate) async fn broker_error(
    e: amqprs::error::Error,
    slot: &CloseSlot,
    object: &str,
    what: &str,
) -> Error {
    // The close frame may arrive just after the failed call returns.
    for _ in 0..20 {
        if slot.lock().map(|s| s.is_some()).unwrap_or(false) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let reason = slot.lock().ok().and_then(|s| s.clone());
    match reason {
        Some((406, text)) => Error::TopologyConflict {
            object: object.to_string(),
            detail: text,
        },
        Some((404, text)) => Error::transport(
            "rabbitmq",
            format!("{what} `{object}`: {text}; apply the topology first"),
        ),
        Some((code, text)) => Error::transport(
            "rabbitmq",
            format!("{what} `{object}` failed: {code} {text}"),
        ),
        None => Error::transport("rabbitmq", format!("{what} `{object}` failed: {e}")),
    }
}

fn ms(d: Duration) -> FieldValue {
    FieldValue::l(d.as_millis().min(i64::MAX as u128) as i64)
}

fn put(t: &mut FieldTable, k: &str, v: FieldValue) {
    if let Ok(k) = k.try_into() {
        t.insert(k, v);
    }
}

/// The arguments of a work queue of kind `kind`.
pub(crate) fn work_queue_args(exchange: &str, q: &QueueSpec, kind: QueueKind) -> FieldTable {
    let mut t = FieldTable::new();
    if kind == QueueKind::Quorum {
        put(&mut t, "x-queue-type", FieldValue::from("quorum"));
    }
    put(
        &mut t,
        "x-dead-letter-exchange",
        FieldValue::from(dead_letter_exchange_name(exchange)),
    );
    put(
        &mut t,
        "x-dead-letter-routing-key",
        FieldValue::from(q.name.clone()),
    );
    if let Some(p) = q.max_priority {
        if kind == QueueKind::Quorum {
            tracing::warn!(queue = %q.name, "quorum queues ignore max_priority; declare a classic queue for priorities");
        } else {
            put(&mut t, "x-max-priority", FieldValue::l(i64::from(p)));
        }
    }
    if let Some(ttl) = q.message_ttl {
        put(&mut t, "x-message-ttl", ms(ttl));
    }
    if let Some(max) = q.max_length {
        put(
            &mut t,
            "x-max-length",
            FieldValue::l(max.min(i64::MAX as u64) as i64),
        );
        put(&mut t, "x-overflow", FieldValue::from("reject-publish"));
    }
    t
}

fn side_queue_args(kind: QueueKind) -> FieldTable {
    let mut t = FieldTable::new();
    if kind == QueueKind::Quorum {
        put(&mut t, "x-queue-type", FieldValue::from("quorum"));
    }
    t
}

/// A retry level of `q`: its messages wait `level`, then go back to `q` alone.
fn retry_queue_args(q: &QueueSpec, level: Duration, kind: QueueKind) -> FieldTable {
    let mut t = side_queue_args(kind);
    put(&mut t, "x-message-ttl", ms(level));
    put(&mut t, "x-dead-letter-exchange", FieldValue::from(""));
    put(
        &mut t,
        "x-dead-letter-routing-key",
        FieldValue::from(q.name.clone()),
    );
    if kind == QueueKind::Quorum {
        put(
            &mut t,
            "x-dead-letter-strategy",
            FieldValue::from("at-least-once"),
        );
        put(&mut t, "x-overflow", FieldValue::from("reject-publish"));
    }
    t
}

async fn declare_queue(
    ch: &Channel,
    slot: &CloseSlot,
    name: &str,
    durable: bool,
    auto_delete: bool,
    args: FieldTable,
) -> Result<()> {
    let a = QueueDeclareArguments::new(name)
        .durable(durable)
        .auto_delete(auto_delete)
        .arguments(args)
        .finish();
    match ch.queue_declare(a).await {
        Ok(_) => Ok(()),
        Err(e) => Err(broker_error(e, slot, name, "declaring queue").await),
    }
}

async fn bind(
    ch: &Channel,
    slot: &CloseSlot,
    queue: &str,
    exchange: &str,
    key: &str,
) -> Result<()> {
    match ch
        .queue_bind(QueueBindArguments::new(queue, exchange, key))
        .await
    {
        Ok(()) => Ok(()),
        Err(e) => Err(broker_error(e, slot, queue, "binding queue").await),
    }
}

async fn declare_exchange(ch: &Channel, slot: &CloseSlot, name: &str, kind: &str) -> Result<()> {
    let a = ExchangeDeclareArguments::new(name, kind)
        .durable(true)
        .finish();
    match ch.exchange_declare(a).await {
        Ok(()) => Ok(()),
        Err(e) => Err(broker_error(e, slot, name, "declaring exchange").await),
    }
}

/// Declare one queue with its dead-letter queue, retry levels and bindings.
pub(crate) async fn declare_queue_set(
    ch: &Channel,
    slot: &CloseSlot,
    exchange: &str,
    q: &QueueSpec,
    cfg: &RabbitConfig,
) -> Result<()> {
    let durable = !q.auto_delete;
    let kind = cfg.queue_kind(q);
    let dlx = dead_letter_exchange_name(exchange);
    let dlq = q.dead_letter_queue();
    declare_queue(
        ch,
        slot,
        &dlq,
        durable,
        q.auto_delete,
        side_queue_args(kind),
    )
    .await?;
    bind(ch, slot, &dlq, &dlx, &q.name).await?;
    for level in cfg.retry_levels(&q.retry_delays) {
        let args = retry_queue_args(q, level, kind);
        declare_queue(
            ch,
            slot,
            &q.retry_queue(level),
            durable,
            q.auto_delete,
            args,
        )
        .await?;
    }
    declare_queue(
        ch,
        slot,
        &q.name,
        durable,
        q.auto_delete,
        work_queue_args(exchange, q, kind),
    )
    .await?;
    for pattern in &q.bindings {
        bind(ch, slot, &q.name, exchange, pattern).await?;
    }
    Ok(())
}

/// Declare a whole topology on `conn`. Idempotent.
pub(crate) async fn declare(conn: &Connection, topo: &Topology, cfg: &RabbitConfig) -> Result<()> {
    let (ch, slot) = open_channel(conn).await?;
    declare_exchange(&ch, &slot, &topo.exchange, "topic").await?;
    declare_exchange(
        &ch,
        &slot,
        &dead_letter_exchange_name(&topo.exchange),
        "direct",
    )
    .await?;
    for q in &topo.queues {
        declare_queue_set(&ch, &slot, &topo.exchange, q, cfg).await?;
    }
    if ch.is_open() {
        let _ = ch.close().await;
    }
    Ok(())
}

/// Delete a topology: each queue with its dead-letter and retry queues, then the exchange and
/// its dead-letter exchange. What does not exist is skipped (a missing queue or exchange is not
/// an error of `queue.delete` / `exchange.delete` on RabbitMQ 3.x and later).
pub(crate) async fn delete(conn: &Connection, topo: &Topology, cfg: &RabbitConfig) -> Result<()> {
    let (ch, slot) = open_channel(conn).await?;
    for q in &topo.queues {
        let mut names = vec![q.name.clone(), q.dead_letter_queue()];
        names.extend(
            cfg.retry_levels(&q.retry_delays)
                .into_iter()
                .map(|l| q.retry_queue(l)),
        );
        for name in names {
            if let Err(e) = ch.queue_delete(QueueDeleteArguments::new(&name)).await {
                return Err(broker_error(e, &slot, &name, "deleting").await);
            }
        }
    }
    for x in [
        topo.exchange.clone(),
        dead_letter_exchange_name(&topo.exchange),
    ] {
        if let Err(e) = ch.exchange_delete(ExchangeDeleteArguments::new(&x)).await {
            return Err(broker_error(e, &slot, &x, "deleting").await);
        }
    }
    if ch.is_open() {
        let _ = ch.close().await;
    }
    Ok(())
}
