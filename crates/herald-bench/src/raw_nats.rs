//! W1 on plain async-nats JetStream: the baseline for `nats://`. One connection publishes with
//! a window of 256 unacknowledged JetStream publishes (each waits for its `PubAck`, as Herald's
//! durable acceptance does); a second connection pulls from a durable consumer in batches of
//! 200 (Herald's prefetch), decodes each body into the event's struct and acks it, one `+ACK`
//! per message. The stream has the same shape as Herald's: file storage, interest retention.

use std::future::IntoFuture;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;

use crate::raw_amqprs::BenchResult;
use crate::w1::{OrderPlaced, PUBLISH_WINDOW};
use crate::{run_name, w1_body, Meter, W1Figures};

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The servers of a `nats://` URL (credentials and options are not used by the baseline).
fn servers(url: &str) -> Vec<String> {
    url.split(',')
        .filter_map(|u| url::Url::parse(u.trim()).ok())
        .filter_map(|u| Some(format!("{}:{}", u.host_str()?, u.port().unwrap_or(4222))))
        .collect()
}

/// Run W1 with `events` events against the NATS server(s) of `url`.
pub async fn run(url: &str, events: u64) -> BenchResult<W1Figures> {
    run_with(url, events, RawWire::Plain).await
}

/// What raw async-nats puts on each message besides the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawWire {
    /// Nothing: the bare baseline.
    Plain,
    /// `Nats-Msg-Id` only (the server's de-duplication, which Herald's publishes use).
    MsgId,
    /// Every header Herald's full form writes.
    HeraldFull,
}

/// [`run`] with `wire` on each message, which separates the cost of the wire format (on the
/// client and in the server's de-duplication) from the cost of the client.
pub async fn run_with(url: &str, events: u64, wire: RawWire) -> BenchResult<W1Figures> {
    let name = run_name("bench-raw").replace('.', "_");
    let subject = format!("{name}.w1.event");
    let pub_client = async_nats::connect(servers(url)).await.map_err(err)?;
    let con_client = async_nats::connect(servers(url)).await.map_err(err)?;
    let js = jetstream::ContextBuilder::new()
        .max_ack_inflight(PUBLISH_WINDOW)
        .backpressure_on_inflight(true)
        .build(pub_client.clone());
    let stream = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.>")],
            retention: stream::RetentionPolicy::Interest,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(err)?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("consumer".into()),
            filter_subject: format!("{name}.w1.>"),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .map_err(err)?;
    let con_js = jetstream::new(con_client.clone());
    let con_stream = con_js.get_stream(&name).await.map_err(err)?;
    let con_consumer: jetstream::consumer::PullConsumer =
        con_stream.get_consumer("consumer").await.map_err(err)?;
    drop(consumer);
    // Experiment: an idle second consumer pulling on a subject nothing is published to.
    let _idle = if std::env::var("RAW_NATS_IDLE_CONSUMER").is_ok() {
        let idle: jetstream::consumer::PullConsumer = stream
            .create_consumer(pull::Config {
                durable_name: Some("idle".into()),
                filter_subject: format!("{name}.idle.x"),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await
            .map_err(err)?;
        let mut m = idle
            .stream()
            .max_messages_per_batch(200)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(err)?;
        Some(tokio::spawn(
            async move { while m.next().await.is_some() {} },
        ))
    } else {
        None
    };
    let mut messages = con_consumer
        .stream()
        .max_messages_per_batch(200)
        .messages()
        .await
        .map_err(err)?;

    let meter = Meter::start_for(Some("nats-server"));
    let consumer = tokio::spawn(async move {
        let mut got = 0u64;
        while got < events {
            let Some(Ok(m)) = messages.next().await else {
                break;
            };
            let _event: Option<OrderPlaced> = serde_json::from_slice(&m.payload).ok();
            let _ = m.ack().await;
            got += 1;
        }
        got
    });
    let mut acks: futures::stream::FuturesUnordered<
        <jetstream::context::PublishAckFuture as IntoFuture>::IntoFuture,
    > = futures::stream::FuturesUnordered::new();
    for n in 0..events {
        if acks.len() >= PUBLISH_WINDOW {
            if let Some(r) = acks.next().await {
                r.map_err(err)?;
            }
        }
        let ack = if wire == RawWire::Plain {
            js.publish(subject.clone(), w1_body(n).into()).await
        } else {
            let e = herald::Envelope::new("w1.event", 1, "w1.event", "bench", Default::default());
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", e.id.as_str());
            if wire == RawWire::HeraldFull {
                e.for_each_wire_header(|_| true, |k, v| headers.insert(k, v.as_ref()));
            }
            js.publish_with_headers(subject.clone(), headers, w1_body(n).into())
                .await
        }
        .map_err(err)?;
        acks.push(ack.into_future());
    }
    while let Some(r) = acks.next().await {
        r.map_err(err)?;
    }
    let publish_elapsed = meter.elapsed();
    let got = tokio::time::timeout(Duration::from_secs(600), consumer)
        .await
        .map_err(|_| "the raw consumer stalled".to_string())?
        .map_err(err)?;
    let mut figures = meter.finish(got);
    figures.publish_elapsed = publish_elapsed;
    let _ = js.delete_stream(&name).await;
    drop(con_client);
    if got < events {
        return Err(format!("raw run consumed {got} of {events}"));
    }
    Ok(figures)
}

/// Delete the streams a Herald run on `exchange` left on the server of `url` (streams outlive
/// a run).
pub async fn delete_exchange(url: &str, exchange: &str) {
    let Ok(client) = async_nats::connect(servers(url)).await else {
        return;
    };
    let js = jetstream::new(client);
    let stream = herald_nats::stream_name(exchange);
    let _ = js.delete_stream(format!("{stream}_dlq")).await;
    let _ = js.delete_stream(stream).await;
}
