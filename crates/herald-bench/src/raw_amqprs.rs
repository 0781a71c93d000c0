//! W1 on plain amqprs: the baseline. One publisher connection with a confirm channel and a
//! window of 256 unconfirmed messages, one consumer connection with prefetch 200 that decodes
//! each body into the event's struct and acks it (one ack per message, as a straightforward
//! client would). The bodies are the bus's W1 event ([`crate::w1::OrderPlaced`]), encoded and
//! decoded with serde as the bus does.

use std::sync::Arc;

use amqprs::callbacks::{ChannelCallback, DefaultConnectionCallback};
use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicPublishArguments, BasicQosArguments, Channel,
    ConfirmSelectArguments, ExchangeDeclareArguments, ExchangeDeleteArguments, QueueBindArguments,
    QueueDeclareArguments, QueueDeleteArguments,
};
use amqprs::connection::Connection;
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, FieldTable, FieldValue, Nack, Return};
use async_trait::async_trait;
use tokio::sync::Semaphore;

use crate::w1::OrderPlaced;
use crate::{run_name, w1_body, Meter, W1Figures};

type AmqpResult<T> = std::result::Result<T, amqprs::error::Error>;

/// Errors of a benchmark run, as text.
pub type BenchResult<T> = std::result::Result<T, String>;

struct Window {
    permits: Arc<Semaphore>,
    confirmed: u64,
}

#[async_trait]
impl ChannelCallback for Window {
    async fn close(&mut self, _: &Channel, _: CloseChannel) -> AmqpResult<()> {
        Ok(())
    }
    async fn cancel(&mut self, _: &Channel, _: Cancel) -> AmqpResult<()> {
        Ok(())
    }
    async fn flow(&mut self, _: &Channel, active: bool) -> AmqpResult<bool> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &Channel, ack: Ack) {
        let tag = ack.delivery_tag();
        let n = if ack.mutiple() {
            tag.saturating_sub(self.confirmed)
        } else {
            1
        };
        self.confirmed = self.confirmed.max(tag);
        self.permits.add_permits(n as usize);
    }
    async fn publish_nack(&mut self, _: &Channel, nack: Nack) {
        let tag = nack.delivery_tag();
        let n = if nack.multiple() {
            tag.saturating_sub(self.confirmed)
        } else {
            1
        };
        self.confirmed = self.confirmed.max(tag);
        self.permits.add_permits(n as usize);
    }
    async fn publish_return(&mut self, _: &Channel, _: Return, _: BasicProperties, _: Vec<u8>) {}
}

async fn open(name: &str) -> BenchResult<Connection> {
    let args = crate::amqp_args(name)?;
    let conn = Connection::open(&args).await.map_err(|e| e.to_string())?;
    conn.register_callback(DefaultConnectionCallback)
        .await
        .map_err(|e| e.to_string())?;
    Ok(conn)
}

/// A channel on `conn` in confirm mode whose confirms give their permits back to `permits`.
async fn confirm_channel(conn: &Connection, permits: &Arc<Semaphore>) -> BenchResult<Channel> {
    let ch = conn.open_channel(None).await.map_err(|e| e.to_string())?;
    ch.register_callback(Window {
        permits: permits.clone(),
        confirmed: 0,
    })
    .await
    .map_err(|e| e.to_string())?;
    ch.confirm_select(ConfirmSelectArguments::new(false))
        .await
        .map_err(|e| e.to_string())?;
    Ok(ch)
}

/// Run W1 with `events` events on a classic (or quorum) queue. With `with_headers`, each message
/// carries the same CloudEvents headers and properties Herald writes (the same wire format), which
/// separates the cost of the wire format from the cost of the client.
pub async fn run(events: u64, quorum: bool, with_headers: bool) -> BenchResult<W1Figures> {
    run_on_channels(events, quorum, with_headers, 1).await
}

/// [`run`] publishing on `channels` confirm channels in turn, sharing the one window of 256: the
/// shape of Herald's default channel pool, to tell what the pool gains on the broker from what
/// the client costs.
pub async fn run_on_channels(
    events: u64,
    quorum: bool,
    with_headers: bool,
    channels: usize,
) -> BenchResult<W1Figures> {
    let queue = run_name("bench-raw");
    let exchange = format!("{queue}.x");
    let pub_conn = open("bench raw publisher").await?;
    let con_conn = open("bench raw consumer").await?;
    let admin = pub_conn
        .open_channel(None)
        .await
        .map_err(|e| e.to_string())?;
    let mut qargs = FieldTable::new();
    if quorum {
        qargs.insert(
            "x-queue-type".try_into().map_err(|_| "name")?,
            FieldValue::from("quorum"),
        );
    }
    admin
        .queue_declare(
            QueueDeclareArguments::new(&queue)
                .durable(true)
                .arguments(qargs)
                .finish(),
        )
        .await
        .map_err(|e| e.to_string())?;

    admin
        .exchange_declare(
            ExchangeDeclareArguments::new(&exchange, "topic")
                .durable(true)
                .finish(),
        )
        .await
        .map_err(|e| e.to_string())?;
    admin
        .queue_bind(QueueBindArguments::new(&queue, &exchange, "w1.#"))
        .await
        .map_err(|e| e.to_string())?;

    let con_ch = con_conn
        .open_channel(None)
        .await
        .map_err(|e| e.to_string())?;
    con_ch
        .basic_qos(BasicQosArguments::new(0, 200, false))
        .await
        .map_err(|e| e.to_string())?;
    let (_tag, mut rx) = con_ch
        .basic_consume_rx(
            BasicConsumeArguments::new(&queue, "bench-raw")
                .manual_ack(true)
                .finish(),
        )
        .await
        .map_err(|e| e.to_string())?;

    let permits = Arc::new(Semaphore::new(256));
    let mut pub_chs = Vec::new();
    for _ in 0..channels.max(1) {
        pub_chs.push(confirm_channel(&pub_conn, &permits).await?);
    }

    let meter = Meter::start();
    let consumer = tokio::spawn(async move {
        let mut got = 0u64;
        while got < events {
            let Some(m) = rx.recv().await else { break };
            let (Some(d), Some(body)) = (m.deliver, m.content) else {
                continue;
            };
            let _event: Option<OrderPlaced> = serde_json::from_slice(&body).ok();
            let _ = con_ch
                .basic_ack(BasicAckArguments::new(d.delivery_tag(), false))
                .await;
            got += 1;
        }
        (got, con_ch)
    });
    for n in 0..events {
        permits.acquire().await.map_err(|e| e.to_string())?.forget();
        let mut props = BasicProperties::default();
        if with_headers {
            let mut e =
                herald::Envelope::new("w1.event", 1, "w1.event", "bench", Default::default());
            e.traceparent = Some(herald::trace::current_or_root().to_traceparent());
            props = herald_rabbitmq::amqp_properties(&e);
        } else {
            props
                .with_persistence(true)
                .with_content_type("application/json")
                .with_message_id(&n.to_string());
        }
        pub_chs[n as usize % pub_chs.len()]
            .basic_publish(
                props.finish(),
                w1_body(n),
                BasicPublishArguments::new(&exchange, "w1.event"),
            )
            .await
            .map_err(|e| e.to_string())?;
    }
    let publish_elapsed = meter.elapsed();
    let (got, con_ch) = consumer.await.map_err(|e| e.to_string())?;
    let mut figures = meter.finish(got);
    figures.publish_elapsed = publish_elapsed;
    let _ = con_ch.close().await;
    let _ = admin.queue_delete(QueueDeleteArguments::new(&queue)).await;
    let _ = admin
        .exchange_delete(ExchangeDeleteArguments::new(&exchange))
        .await;
    for pub_ch in pub_chs {
        let _ = pub_ch.close().await;
    }
    let _ = pub_conn.close().await;
    let _ = con_conn.close().await;
    if got < events {
        return Err(format!("raw run consumed {got} of {events}"));
    }
    Ok(figures)
}

/// The latency run on plain amqprs: `events` events at `rate` per second, publish to handler.
/// Same shape as [`crate::rabbit_w1::latency`], as a baseline for what the broker and the
/// machine add.
pub async fn latency(events: u64, rate: u64) -> BenchResult<crate::LatencyFigures> {
    use std::time::{Duration, Instant};
    let queue = run_name("bench-rawlat");
    let pub_conn = open("bench raw latency publisher").await?;
    let con_conn = open("bench raw latency consumer").await?;
    let admin = pub_conn
        .open_channel(None)
        .await
        .map_err(|e| e.to_string())?;
    admin
        .queue_declare(QueueDeclareArguments::new(&queue).durable(true).finish())
        .await
        .map_err(|e| e.to_string())?;
    let con_ch = con_conn
        .open_channel(None)
        .await
        .map_err(|e| e.to_string())?;
    con_ch
        .basic_qos(BasicQosArguments::new(0, 200, false))
        .await
        .map_err(|e| e.to_string())?;
    let (_tag, mut rx) = con_ch
        .basic_consume_rx(
            BasicConsumeArguments::new(&queue, "bench-rawlat")
                .manual_ack(true)
                .finish(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let permits = Arc::new(Semaphore::new(256));
    let pub_ch = confirm_channel(&pub_conn, &permits).await?;
    let origin = Instant::now();
    let consumer = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(events as usize);
        while (lat.len() as u64) < events {
            let Some(m) = rx.recv().await else { break };
            let (Some(d), Some(body)) = (m.deliver, m.content) else {
                continue;
            };
            let now = origin.elapsed().as_nanos() as u64;
            let sent = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["sent_ns"].as_u64())
                .unwrap_or(now);
            lat.push(now.saturating_sub(sent) as f64 / 1e6);
            let _ = con_ch
                .basic_ack(BasicAckArguments::new(d.delivery_tag(), false))
                .await;
        }
        (lat, con_ch)
    });
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for i in 0..events {
        tick.tick().await;
        permits.acquire().await.map_err(|e| e.to_string())?.forget();
        let sent_ns = origin.elapsed().as_nanos() as u64;
        let body = serde_json::to_vec(&serde_json::json!({ "n": i, "sent_ns": sent_ns }))
            .unwrap_or_default();
        let mut props = BasicProperties::default();
        props
            .with_persistence(true)
            .with_content_type("application/json");
        pub_ch
            .basic_publish(props, body, BasicPublishArguments::new("", &queue))
            .await
            .map_err(|e| e.to_string())?;
    }
    let (mut lat, con_ch) = tokio::time::timeout(Duration::from_secs(60), consumer)
        .await
        .map_err(|_| "raw latency run timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let _ = con_ch.close().await;
    let _ = admin.queue_delete(QueueDeleteArguments::new(&queue)).await;
    let _ = pub_ch.close().await;
    let _ = pub_conn.close().await;
    let _ = con_conn.close().await;
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    Ok(crate::LatencyFigures {
        events: lat.len() as u64,
        rate,
        p50_ms: crate::percentile(&lat, 0.50),
        p99_ms: crate::percentile(&lat, 0.99),
        max_ms: lat.last().copied().unwrap_or(0.0),
    })
}
