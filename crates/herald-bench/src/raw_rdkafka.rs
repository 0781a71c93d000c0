//! W1 on plain rdkafka: the baseline for `kafka://`. One producer with the settings Herald's
//! uses (acks=all, idempotent, Java-compatible key hashing, no compression) and a window of
//! 256 unacknowledged records, each keyed by a fresh UUID as Herald keys an event without a
//! subject by its id; one consumer in a new group with Herald's consumer settings, which
//! decodes each body into the event's struct and commits its offsets every 100 ms, as
//! Herald does. The topic has as many partitions as Herald's (4, or `?partitions=` of the
//! URL). The bodies are the bus's W1 event, encoded and decoded with serde as the bus does;
//! the records carry no headers (Herald's carry the CloudEvents attributes).

use std::time::Duration;

use futures::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::raw_amqprs::BenchResult;
use crate::w1::OrderPlaced;
use crate::{run_name, w1_body, Meter, W1Figures};

/// The broker the Kafka benchmarks use: `HERALD_BENCH_KAFKA_URL`, or the local default.
pub fn kafka_url() -> String {
    std::env::var("HERALD_BENCH_KAFKA_URL").unwrap_or_else(|_| "kafka://127.0.0.1:9092".into())
}

/// Run W1 with `events` events on a fresh topic of [`kafka_url`]'s broker.
pub async fn run(events: u64) -> BenchResult<W1Figures> {
    run_on(&kafka_url(), events).await
}

/// Run W1 with `events` events on a fresh topic of the broker at `url`.
pub async fn run_on(url: &str, events: u64) -> BenchResult<W1Figures> {
    let cfg = herald_kafka::KafkaConfig::from_url(url, "bench raw").map_err(|e| e.to_string())?;
    let brokers = cfg.brokers.join(",");
    let topic = run_name("bench-raw");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .map_err(|e| e.to_string())?;
    admin
        .create_topics(
            &[NewTopic::new(
                &topic,
                cfg.partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .map_err(|e| e.to_string())?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("compression.type", "none")
        .create()
        .map_err(|e| e.to_string())?;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", &topic)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "500")
        .set("partition.assignment.strategy", "roundrobin")
        .set("fetch.wait.max.ms", "500")
        .create()
        .map_err(|e| e.to_string())?;
    consumer.subscribe(&[&topic]).map_err(|e| e.to_string())?;

    let meter = Meter::start_for(Some("tansu"));
    // The consumer runs on a task of its own, as the bus's does, so producing and consuming use
    // both cores.
    let consume = tokio::spawn({
        let topic = topic.clone();
        async move {
            let mut got = 0u64;
            // Next offset to commit per partition, committed every 100 ms.
            let mut positions = std::collections::HashMap::new();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut stream = consumer.stream();
            while got < events {
                tokio::select! {
                    m = stream.next() => {
                        let Some(Ok(m)) = m else { continue };
                        let _event: Option<OrderPlaced> =
                            m.payload().and_then(|b| serde_json::from_slice(b).ok());
                        positions.insert(m.partition(), m.offset() + 1);
                        got += 1;
                    }
                    _ = tick.tick() => commit(&consumer, &topic, &positions),
                }
            }
            commit(&consumer, &topic, &positions);
            got
        }
    });
    let produce = async {
        let mut acks = futures::stream::iter(0..events)
            .map(|n| {
                let producer = &producer;
                let topic = &topic;
                async move {
                    let key = uuid::Uuid::now_v7().to_string();
                    let body = w1_body(n);
                    let record = FutureRecord::to(topic).key(&key).payload(&body);
                    producer
                        .send(record, Duration::from_secs(60))
                        .await
                        .map(|_| ())
                        .map_err(|(e, _)| e.to_string())
                }
            })
            .buffer_unordered(crate::w1::PUBLISH_WINDOW);
        while let Some(r) = acks.next().await {
            r?;
        }
        Ok::<_, String>(meter.elapsed())
    };
    let publish_elapsed = produce.await?;
    let got = consume.await.map_err(|e| e.to_string())?;
    let mut figures = meter.finish(got);
    figures.publish_elapsed = publish_elapsed;
    Ok(figures)
}

fn commit(consumer: &StreamConsumer, topic: &str, positions: &std::collections::HashMap<i32, i64>) {
    let mut tpl = TopicPartitionList::new();
    for (p, o) in positions {
        let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(*o));
    }
    if tpl.count() > 0 {
        let _ = consumer.commit(&tpl, CommitMode::Async);
    }
}
