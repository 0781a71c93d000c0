//! Workload `append`: the event store's appends (herald-es on PostgreSQL) against a raw
//! `tokio-postgres` loop doing the same writes in the same run.
//!
//! The writes of one append, on both sides: the stream's version row, the event rows (W1-sized
//! JSON bodies, each with its CloudEvents headers) and the same rows in the outbox table, in one
//! transaction. Two shapes: single-event appends to many streams (`writers` concurrent writers,
//! each over its own 50 streams) and batches of `batch` events to one stream. The raw side
//! writes into tables made by the same migration (same indexes, same outbox trigger) with
//! prepared statements, `BEGIN`, three `INSERT`s and `COMMIT` pipelined in one round trip; it
//! checks no expected version (the unique key on (stream, version) is its only guard). Two rounds
//! of half the events each: raw first, then Herald first.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::{Envelope, Event};
use herald_es::postgres::{connect_client, PgEventStore};
use herald_es::{EventStore, ExpectedVersion};

use crate::w1::OrderPlaced;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What one append run measured: events per second of each shape, Herald and raw.
#[derive(Debug, Clone, Copy, Default)]
pub struct AppendFigures {
    /// Events written by each side in each shape.
    pub events: u64,
    /// Single-event appends, Herald.
    pub single_herald_eps: f64,
    /// Single-event appends, raw.
    pub single_raw_eps: f64,
    /// Batches to one stream, Herald.
    pub batch_herald_eps: f64,
    /// Batches to one stream, raw.
    pub batch_raw_eps: f64,
    /// Both shapes together, Herald.
    pub herald_eps: f64,
    /// Both shapes together, raw.
    pub raw_eps: f64,
}

impl AppendFigures {
    /// The `RESULT` line.
    pub fn result_line(&self, writers: usize, batch: usize) -> String {
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        format!(
            "RESULT workload=append database=postgres events={} writers={writers} batch={batch} herald_eps={:.0} raw_eps={:.0} ratio={:.2} single_herald_eps={:.0} single_raw_eps={:.0} single_ratio={:.2} batch_herald_eps={:.0} batch_raw_eps={:.0} batch_ratio={:.2}",
            self.events,
            self.herald_eps,
            self.raw_eps,
            ratio(self.herald_eps, self.raw_eps),
            self.single_herald_eps,
            self.single_raw_eps,
            ratio(self.single_herald_eps, self.single_raw_eps),
            self.batch_herald_eps,
            self.batch_raw_eps,
            ratio(self.batch_herald_eps, self.batch_raw_eps),
        )
    }
}

fn envelope(seq: u64, stream: &str) -> Result<Envelope, BoxError> {
    let mut e = Envelope::for_event(&OrderPlaced::sample(seq), "bench-store")?;
    e.subject = Some(stream.to_string());
    Ok(e)
}

/// Run both sides (raw first, then Herald) on `conninfo`, in fresh schemas dropped afterwards.
pub async fn run(
    conninfo: &str,
    events: u64,
    writers: usize,
    batch: usize,
) -> Result<AppendFigures, BoxError> {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let herald_schema = format!("bench_es_{}", &tag[..10]);
    let raw_schema = format!("bench_raw_{}", &tag[..10]);
    let store = Arc::new(
        PgEventStore::builder(conninfo)
            .schema(&herald_schema)
            .service("bench-store")
            .pool_size(writers)
            .connect()
            .await?,
    );
    // The raw side's tables: the same migration, in its own schema.
    PgEventStore::builder(conninfo)
        .schema(&raw_schema)
        .connect()
        .await?;
    let result = async {
        let raw = Raw::new(conninfo, &raw_schema);
        // Two rounds, raw first then Herald first, so neither side always meets a colder or a
        // busier server; each figure is over both rounds.
        let mut t = [Duration::ZERO; 4]; // single raw, batch raw, single herald, batch herald
        for round in 0..2 {
            let per_round = events / 2 + u64::from(round == 0) * (events % 2);
            if round == 0 {
                t[0] += raw.single(per_round, writers, round).await?;
                t[1] += raw.batches(per_round, batch, round).await?;
            }
            t[2] += herald_single(&store, per_round, writers, round).await?;
            t[3] += herald_batches(&store, per_round, batch, round).await?;
            if round == 1 {
                t[0] += raw.single(per_round, writers, round).await?;
                t[1] += raw.batches(per_round, batch, round).await?;
            }
        }
        let eps = |d: Duration| events as f64 / d.as_secs_f64();
        Ok::<_, BoxError>(AppendFigures {
            events,
            single_raw_eps: eps(t[0]),
            batch_raw_eps: eps(t[1]),
            single_herald_eps: eps(t[2]),
            batch_herald_eps: eps(t[3]),
            raw_eps: 2.0 * events as f64 / (t[0] + t[1]).as_secs_f64(),
            herald_eps: 2.0 * events as f64 / (t[2] + t[3]).as_secs_f64(),
        })
    }
    .await;
    let cleanup = connect_client(conninfo).await?;
    for schema in [&herald_schema, &raw_schema] {
        let _ = cleanup
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await;
    }
    result
}

/// Which stream writer `w`'s `i`-th append goes to.
fn stream_of(round: usize, w: usize, i: u64) -> String {
    format!("r{round}-s{w}-{}", i % 50)
}

async fn herald_single(
    store: &Arc<PgEventStore>,
    events: u64,
    writers: usize,
    round: usize,
) -> Result<Duration, BoxError> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        let n = events / writers as u64 + u64::from((w as u64) < events % writers as u64);
        tasks.push(tokio::spawn(async move {
            let mut versions: HashMap<String, u64> = HashMap::new();
            for i in 0..n {
                let stream = stream_of(round, w, i);
                let v = versions.entry(stream.clone()).or_insert(0);
                let e = envelope(i, &stream)?;
                let appended = store
                    .append(&stream, ExpectedVersion::Exact(*v), vec![e])
                    .await?;
                *v = appended.version;
            }
            Ok::<(), BoxError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(started.elapsed())
}

async fn herald_batches(
    store: &Arc<PgEventStore>,
    events: u64,
    batch: usize,
    round: usize,
) -> Result<Duration, BoxError> {
    let stream = format!("batch-stream-{round}");
    let started = Instant::now();
    let mut version = 0;
    let mut seq = 0;
    while seq < events {
        let n = (events - seq).min(batch as u64);
        let batch = (seq..seq + n)
            .map(|i| envelope(i, &stream))
            .collect::<Result<Vec<_>, _>>()?;
        version = store
            .append(&stream, ExpectedVersion::Exact(version), batch)
            .await?
            .version;
        seq += n;
    }
    Ok(started.elapsed())
}

/// The raw side: hand-written SQL on plain clients.
struct Raw {
    conninfo: String,
    stream_sql: String,
    events_sql: String,
    outbox_sql: String,
}

/// The columns of one raw append.
struct RawRows {
    versions: Vec<i64>,
    ids: Vec<String>,
    headers: Vec<String>,
    bodies: Vec<String>,
}

fn raw_rows(
    stream: &str,
    first_version: u64,
    seqs: std::ops::Range<u64>,
) -> Result<RawRows, BoxError> {
    let mut rows = RawRows {
        versions: Vec::new(),
        ids: Vec::new(),
        headers: Vec::new(),
        bodies: Vec::new(),
    };
    for (k, seq) in seqs.enumerate() {
        let id = uuid::Uuid::now_v7().to_string();
        let headers = serde_json::json!({
            "cloudEvents_id": id,
            "cloudEvents_type": OrderPlaced::NAME,
            "cloudEvents_source": "bench-store",
            "cloudEvents_specversion": "1.0",
            "cloudEvents_time": chrono_now(),
            "cloudEvents_subject": stream,
            "cloudEvents_eventversion": "1",
            "cloudEvents_datacontenttype": "application/json",
        });
        rows.versions.push((first_version + k as u64) as i64);
        rows.ids.push(id);
        rows.headers.push(headers.to_string());
        rows.bodies
            .push(serde_json::to_string(&OrderPlaced::sample(seq))?);
    }
    Ok(rows)
}

fn chrono_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Raw {
    fn new(conninfo: &str, schema: &str) -> Self {
        Raw {
            conninfo: conninfo.to_string(),
            stream_sql: format!(
                "INSERT INTO {schema}.es_streams (stream_id, version) VALUES ($1, $2)
                 ON CONFLICT (stream_id) DO UPDATE SET version = EXCLUDED.version, updated_at = now()"
            ),
            events_sql: format!(
                "INSERT INTO {schema}.es_events (stream_id, version, event_id, event_type, event_version, headers, body)
                 SELECT $1, v, i, $2, 1, h, b FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[]) AS u(v, i, h, b)"
            ),
            outbox_sql: format!(
                "INSERT INTO {schema}.herald_outbox (event_id, aggregate, routing_key, event_type, headers, body)
                 SELECT i, $1, $2, $2, h::jsonb, b FROM unnest($3::text[], $4::text[], $5::text[]) AS u(i, h, b)"
            ),
        }
    }

    /// One writer's loop over its streams.
    async fn writer(&self, w: usize, n: u64, round: usize) -> Result<(), BoxError> {
        let client = connect_client(&self.conninfo).await?;
        let (st_stream, st_events, st_outbox) = (
            client.prepare(&self.stream_sql).await?,
            client.prepare(&self.events_sql).await?,
            client.prepare(&self.outbox_sql).await?,
        );
        let mut versions: HashMap<String, u64> = HashMap::new();
        for i in 0..n {
            let stream = stream_of(round, w, i);
            let v = versions.entry(stream.clone()).or_insert(0);
            let rows = raw_rows(&stream, *v + 1, i..i + 1)?;
            *v += 1;
            self.append(
                &client,
                [&st_stream, &st_events, &st_outbox],
                &stream,
                *v,
                &rows,
            )
            .await?;
        }
        Ok(())
    }

    async fn append(
        &self,
        client: &tokio_postgres::Client,
        st: [&tokio_postgres::Statement; 3],
        stream: &str,
        version: u64,
        rows: &RawRows,
    ) -> Result<(), BoxError> {
        let version = version as i64;
        let name = OrderPlaced::NAME;
        let p_stream: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&stream, &version];
        let p_events: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
            &stream,
            &name,
            &rows.versions,
            &rows.ids,
            &rows.headers,
            &rows.bodies,
        ];
        let p_outbox: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
            [&stream, &name, &rows.ids, &rows.headers, &rows.bodies];
        tokio::try_join!(
            client.batch_execute("BEGIN"),
            client.execute(st[0], &p_stream),
            client.execute(st[1], &p_events),
            client.execute(st[2], &p_outbox),
            client.batch_execute("COMMIT"),
        )?;
        Ok(())
    }

    async fn single(
        &self,
        events: u64,
        writers: usize,
        round: usize,
    ) -> Result<Duration, BoxError> {
        let started = Instant::now();
        let this = Arc::new(Raw {
            conninfo: self.conninfo.clone(),
            stream_sql: self.stream_sql.clone(),
            events_sql: self.events_sql.clone(),
            outbox_sql: self.outbox_sql.clone(),
        });
        let mut tasks = Vec::new();
        for w in 0..writers {
            let this = this.clone();
            let n = events / writers as u64 + u64::from((w as u64) < events % writers as u64);
            tasks.push(tokio::spawn(async move { this.writer(w, n, round).await }));
        }
        for t in tasks {
            t.await??;
        }
        Ok(started.elapsed())
    }

    async fn batches(&self, events: u64, batch: usize, round: usize) -> Result<Duration, BoxError> {
        let stream = format!("batch-stream-{round}");
        let client = connect_client(&self.conninfo).await?;
        let st = (
            client.prepare(&self.stream_sql).await?,
            client.prepare(&self.events_sql).await?,
            client.prepare(&self.outbox_sql).await?,
        );
        let started = Instant::now();
        let mut seq = 0;
        while seq < events {
            let n = (events - seq).min(batch as u64);
            let rows = raw_rows(&stream, seq + 1, seq..seq + n)?;
            seq += n;
            self.append(&client, [&st.0, &st.1, &st.2], &stream, seq, &rows)
                .await?;
        }
        Ok(started.elapsed())
    }
}
