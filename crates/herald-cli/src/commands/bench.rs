//! `herald bench`: workload W1 (see the herald-bench crate) through the Herald bus.
//!
//! On the embedded SQLite broker, which several processes share, the consumer runs in a child
//! process (`herald bench --role consumer`): W1 there measures two processes on one file. The
//! child prints `READY` once subscribed and `DONE cpu_us=N` once it has handled every event. On
//! RabbitMQ, publisher and consumer run in this process with their own connections, as the raw
//! amqprs baseline does (`--raw` runs it in the same invocation: before Herald, and with
//! `--rounds` alternately before and after, since the order moves the ratio by a few percent).

use std::process::Stdio;
use std::time::{Duration, Instant};

use herald::{Bus, Config, QueueKind};
use herald_bench::{raw_amqprs, raw_rdkafka, w1};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::CliResult;

/// Run benchmark workload W1.
#[derive(clap::Args)]
pub struct Args {
    /// Number of events
    #[arg(long, default_value_t = 50_000)]
    events: u64,
    /// RabbitMQ: also run raw amqprs on the same workload (one publishing channel; Herald uses
    /// its pool, two by default) and print the ratio; NATS: raw async-nats (same stream, window
    /// of JetStream acks, pull batches and `Nats-Msg-Id`); Kafka: raw rdkafka (same acks,
    /// window, partitions and commit interval). With the broker on this host each run also
    /// prints the broker's CPU per event
    #[arg(long)]
    raw: bool,
    /// NATS, with --raw: the raw baseline publishes without `Nats-Msg-Id`, so the server skips
    /// the de-duplication every Herald publish asks for (by default it sends the id too, and
    /// the server does the same work for both sides)
    #[arg(long, requires = "raw")]
    raw_plain: bool,
    /// RabbitMQ: use quorum queues
    #[arg(long)]
    quorum: bool,
    /// Measure publish-to-handler latency at a fixed rate instead of throughput
    #[arg(long)]
    latency: bool,
    /// Events per second for --latency
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Throughput: run W1 this many times (with --raw, alternating which side goes first) and
    /// report the medians, and the median of the rounds' ratios
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Workload: w1 (the bus), append (herald-es event store against raw tokio-postgres),
    /// saga (saga transitions on PostgreSQL + RabbitMQ, projection catch-up)
    #[arg(long, default_value = "w1", value_parser = ["w1", "append", "saga"])]
    workload: String,
    /// The event store of --workload append|saga: postgres://USER@HOST/DB or a libpq conninfo
    #[arg(long)]
    database: Option<String>,
    /// Internal: run one side of a split run
    #[arg(long, hide = true, value_parser = ["consumer"])]
    role: Option<String>,
}

fn transport_name(config: &Config) -> CliResult<&'static str> {
    herald::transport::check_url(&config.broker)?;
    Ok(
        match herald::transport::scheme_of(&config.broker).unwrap_or("sqlite") {
            "memory" => "memory",
            "sqlite" => "sqlite",
            "amqp" | "amqps" => "rabbitmq",
            "nats" | "tls" => "nats",
            "kafka" => "kafka",
            other => return Err(format!("herald bench has no workload for {other}:// yet").into()),
        },
    )
}

/// Whether the work queue is a quorum queue: asked for, or the RabbitMQ URL's default (a
/// cluster URL, or `queue_type=quorum`).
fn declares_quorum(config: &Config, quorum: bool) -> bool {
    #[cfg(feature = "rabbitmq")]
    if let Ok(c) = herald_rabbitmq::RabbitConfig::from_url(&config.broker, "bench") {
        return quorum || c.queue_type == QueueKind::Quorum;
    }
    let _ = config;
    quorum
}

fn queue_kind(quorum: bool) -> QueueKind {
    if quorum {
        QueueKind::Quorum
    } else {
        QueueKind::Classic
    }
}

pub async fn run(mut config: Config, args: Args) -> CliResult<()> {
    if args.events == 0 {
        return Err("--events must be at least 1".into());
    }
    if args.workload != "w1" {
        return super::bench_workload::run(
            &config,
            &args.workload,
            args.database.as_deref(),
            args.events,
        )
        .await;
    }
    let kind = queue_kind(args.quorum);
    if args.role.as_deref() == Some("consumer") {
        return consumer_role(config, args.events, kind).await;
    }
    let transport = transport_name(&config)?;
    if args.quorum && transport != "rabbitmq" {
        return Err("--quorum applies to amqp:// brokers".into());
    }
    if args.raw_plain && transport != "nats" {
        return Err("--raw-plain applies to nats:// brokers".into());
    }
    if args.raw && !matches!(transport, "rabbitmq" | "nats" | "kafka") {
        return Err(
            "--raw compares with the raw client of amqp://, nats:// and kafka:// brokers".into(),
        );
    }
    if transport == "rabbitmq" {
        // The raw client connects to the same broker.
        std::env::set_var(
            "HERALD_BENCH_AMQP_URL",
            config.broker.split(',').next().unwrap_or_default(),
        );
    }
    // A fresh exchange per run, so earlier runs' leftovers do not count.
    config.exchange = format!("bench.w1.{:08x}", rand::random::<u32>());
    if args.latency {
        if args.rounds > 1 {
            return Err("--rounds applies to throughput runs, not --latency".into());
        }
        return latency(&config, transport, &args).await;
    }
    let mut rounds = herald_bench::Rounds::default();
    for round in 0..args.rounds.max(1) {
        if round > 0 {
            config.exchange = format!("bench.w1.{:08x}", rand::random::<u32>());
        }
        // Rounds alternate which side goes first, so a broker that slows down (or warms up)
        // over a run does not always favour the same side.
        let raw_first = round % 2 == 0;
        let mut raw = None;
        if raw_first {
            raw = raw_run(transport, &config.broker, &args).await?;
        }
        let figures = herald_run(&config, transport, &args, kind).await?;
        if !raw_first {
            raw = raw_run(transport, &config.broker, &args).await?;
        }
        rounds.push(figures.end_to_end_eps, raw, figures.cpu_us_per_event);
    }
    let mut line = rounds.result_line("w1", transport, args.events);
    if args.raw && transport == "nats" {
        // Which raw baseline the ratio is against, as it changes what the ratio means.
        line.push_str(if args.raw_plain {
            " baseline=raw-plain"
        } else {
            " baseline=raw-msg-id"
        });
    }
    if transport == "rabbitmq" {
        line.push_str(if declares_quorum(&config, args.quorum) {
            " queue=quorum"
        } else {
            " queue=classic"
        });
    }
    println!("{line}");
    Ok(())
}

/// The baseline beside Herald: on `memory://` the in-process floor (JSON encode, channel,
/// decode); on RabbitMQ raw amqprs, with `--raw`.
async fn raw_run(transport: &str, broker: &str, args: &Args) -> CliResult<Option<f64>> {
    if transport == "memory" {
        let raw = w1::run_raw_in_process(args.events).await;
        eprintln!(
            "raw in-process (serde_json + tokio mpsc): end to end {:.0}/s, {:.1} µs CPU per event",
            raw.end_to_end_eps, raw.cpu_us_per_event
        );
        Ok(Some(raw.end_to_end_eps))
    } else if args.raw && transport == "nats" {
        use herald_bench::raw_nats::{run_with, RawWire};
        // By default the raw client publishes what Herald's publishes must (the event id as
        // `Nats-Msg-Id`, which the server de-duplicates): the same workload on both sides.
        let (wire, with) = if args.raw_plain {
            (RawWire::Plain, " without Nats-Msg-Id")
        } else {
            (RawWire::MsgId, " with Nats-Msg-Id")
        };
        let raw = run_with(broker, args.events, wire).await?;
        eprintln!(
            "raw async-nats{with}: end to end {:.0}/s, {:.1} µs CPU per event{}",
            raw.eps,
            raw.cpu_us_per_event,
            broker_figure(raw.broker_us_per_event)
        );
        Ok(Some(raw.eps))
    } else if args.raw && transport == "kafka" {
        let raw = raw_rdkafka::run_on(broker, args.events).await?;
        eprintln!(
            "raw rdkafka: end to end {:.0}/s, {:.1} µs CPU per event{}",
            raw.eps,
            raw.cpu_us_per_event,
            broker_figure(raw.broker_us_per_event)
        );
        Ok(Some(raw.eps))
    } else if args.raw {
        let raw = raw_amqprs::run(args.events, args.quorum, false).await?;
        eprintln!(
            "raw amqprs: end to end {:.0}/s, {:.1} µs CPU per event{}",
            raw.eps,
            raw.cpu_us_per_event,
            broker_figure(raw.broker_us_per_event)
        );
        Ok(Some(raw.eps))
    } else {
        Ok(None)
    }
}

/// One W1 run through the bus, its queues and exchange deleted afterwards.
async fn herald_run(
    config: &Config,
    transport: &str,
    args: &Args,
    kind: QueueKind,
) -> CliResult<w1::W1Figures> {
    let figures = if matches!(transport, "memory" | "rabbitmq" | "nats" | "kafka") {
        // Network brokers: one process, as the raw clients run, so the ratio compares clients and
        // not a second runtime's threads competing for the cores (two processes measured 6%
        // slower on RabbitMQ).
        w1::run_in_process(&config.broker, &config.exchange, args.events, kind)
            .await
            .map_err(Into::into)
    } else {
        split_run(config, args.events, args.quorum).await
    };
    cleanup(config, transport).await;
    let figures = figures?;
    eprintln!(
        "W1 on {transport}{}: {} events, published {:.0}/s, end to end {:.0}/s, {:.1} µs CPU per event{}",
        if args.quorum { " (quorum)" } else { "" },
        figures.events,
        figures.publish_eps,
        figures.end_to_end_eps,
        figures.cpu_us_per_event,
        broker_figure(figures.broker_us_per_event)
    );
    Ok(figures)
}

/// The broker's CPU per event, when it runs on this host (it shares the cores with the client).
fn broker_figure(us_per_event: Option<f64>) -> String {
    us_per_event.map_or_else(String::new, |us| format!(" (broker {us:.1} µs)"))
}

async fn latency(config: &Config, transport: &str, args: &Args) -> CliResult<()> {
    let raw = if args.raw && transport == "rabbitmq" {
        let r = raw_amqprs::latency(args.events, args.rate).await?;
        eprintln!(
            "raw amqprs: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            r.p50_ms, r.p99_ms, r.max_ms
        );
        Some(r)
    } else {
        None
    };
    let l = w1::latency(&config.broker, &config.exchange, args.events, args.rate).await;
    cleanup(config, transport).await;
    let l = l?;
    eprintln!(
        "latency on {transport}: {} events at {}/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        l.events, l.rate, l.p50_ms, l.p99_ms, l.max_ms
    );
    let mut line = w1::latency_line(transport, &l);
    if let Some(r) = raw {
        line.push_str(&format!(
            " raw_p50_ms={:.2} raw_p99_ms={:.2}",
            r.p50_ms, r.p99_ms
        ));
    }
    println!("{line}");
    Ok(())
}

/// On RabbitMQ, delete the run's queues and exchange (they outlive the processes).
async fn cleanup(config: &Config, transport: &str) {
    if transport == "nats" {
        herald_bench::raw_nats::delete_exchange(&config.broker, &config.exchange).await;
    }
    if transport == "rabbitmq" {
        let mut queue = herald::QueueSpec::new(w1::queue_name(&config.exchange), "");
        queue.retry_delays = herald::middleware::RetryPolicy::default().delay_levels();
        herald_bench::rabbit_w1::cleanup(&config.exchange, &queue).await;
    }
}

async fn consumer_role(config: Config, events: u64, kind: QueueKind) -> CliResult<()> {
    let bus = Bus::builder()
        .config(config)
        .service("bench-consumer")
        .build()
        .await?;
    let (_count, done) = w1::subscribe_counter(&bus, events, kind)?;
    let notified = done.notified();
    bus.start().await?;
    println!("READY");
    let cpu_before = herald_bench::cpu::process_cpu();
    notified.await;
    let cpu = herald_bench::cpu::process_cpu() - cpu_before;
    println!("DONE cpu_us={}", cpu.as_micros());
    bus.shutdown().await?;
    Ok(())
}

async fn split_run(config: &Config, events: u64, quorum: bool) -> CliResult<w1::W1Figures> {
    let exe = std::env::current_exe()?;
    let mut command = tokio::process::Command::new(exe);
    command
        .args([
            "bench",
            "--role",
            "consumer",
            "--events",
            &events.to_string(),
        ])
        .args(["--broker", &config.broker, "--exchange", &config.exchange]);
    if quorum {
        command.arg("--quorum");
    }
    let mut child = command.stdout(Stdio::piped()).kill_on_drop(true).spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or("consumer process has no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let expect = |line: Option<String>, prefix: &str| -> CliResult<String> {
        match line {
            Some(l) if l.starts_with(prefix) => Ok(l),
            other => Err(format!("consumer process said {other:?}, expected {prefix}").into()),
        }
    };
    expect(
        tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await??,
        "READY",
    )?;
    let publisher = Bus::builder()
        .config(config.clone())
        .service("bench-publisher")
        .build()
        .await?;
    let cpu_before = herald_bench::cpu::process_cpu();
    let started = Instant::now();
    let publish_time = w1::publish_all(&publisher, events).await?;
    let done = expect(
        tokio::time::timeout(Duration::from_secs(600), lines.next_line()).await??,
        "DONE",
    )?;
    let e2e = started.elapsed();
    let cpu = herald_bench::cpu::process_cpu() - cpu_before;
    publisher.shutdown().await?;
    let child_cpu_us: f64 = done
        .trim_start_matches("DONE cpu_us=")
        .parse()
        .map_err(|_| format!("bad consumer report: {done}"))?;
    let _ = child.wait().await;
    Ok(w1::W1Figures {
        events,
        publish_eps: events as f64 / publish_time.as_secs_f64(),
        end_to_end_eps: events as f64 / e2e.as_secs_f64(),
        cpu_us_per_event: (cpu.as_secs_f64() * 1e6 + child_cpu_us) / events as f64,
        broker_us_per_event: None,
    })
}
