//! Benchmarks for Herald's transports. Every run prints a `RESULT` line that scripts read.
//!
//! [`w1`] runs workload W1 through the Herald *bus* on any transport (the `herald bench`
//! command); on `memory://` beside a raw in-process floor.
//!
//! W1: 200-byte persistent JSON events, publisher confirms with 256 in flight, prefetch 200,
//! ack after decoding the JSON. [`raw_amqprs`] runs it on plain amqprs, [`rabbit_w1`] through
//! Herald's [`RabbitTransport`](herald_rabbitmq::RabbitTransport); both return
//! [`W1Figures`]. [`rabbit_w1::latency`] measures publish-to-handler latency at a fixed rate.

#![warn(missing_docs)]

pub mod append;
pub mod cpu;
pub mod rabbit_w1;
pub mod raw_amqprs;
pub mod raw_nats;
pub mod raw_rdkafka;
pub mod saga;
pub mod w1;

use std::time::{Duration, Instant};

/// What one W1 run measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct W1Figures {
    /// Events published and consumed.
    pub events: u64,
    /// Events per second, end to end (first publish to last ack).
    pub eps: f64,
    /// Client CPU (user + system, this process) per event, in microseconds.
    pub cpu_us_per_event: f64,
    /// The local broker's CPU per event, in microseconds, when it runs on this host.
    pub broker_us_per_event: Option<f64>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Wall time until the last publish was confirmed.
    pub publish_elapsed: Duration,
}

/// What a latency run measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct LatencyFigures {
    /// Events measured.
    pub events: u64,
    /// The target publish rate.
    pub rate: u64,
    /// Median publish-to-handler latency, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, in milliseconds.
    pub p99_ms: f64,
    /// Largest, in milliseconds.
    pub max_ms: f64,
}

/// The W1 result line: Herald and raw amqprs side by side. `raw` is the bare baseline (body and
/// a few properties); `raw_same_wire`, when given, is raw amqprs sending Herald's wire format
/// (the CloudEvents headers), reported as `raw_wire_eps` and `ratio_same_wire`.
pub fn result_line(
    queue_kind: &str,
    herald: &W1Figures,
    raw: &W1Figures,
    raw_same_wire: Option<&W1Figures>,
) -> String {
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let mut line = format!(
        "RESULT workload=w1 transport=rabbitmq queue={queue_kind} events={} herald_eps={:.0} raw_eps={:.0} ratio={:.2} cpu_us_per_event={:.1} raw_cpu_us_per_event={:.1}",
        herald.events,
        herald.eps,
        raw.eps,
        ratio(herald.eps, raw.eps),
        herald.cpu_us_per_event,
        raw.cpu_us_per_event,
    );
    if let Some(w) = raw_same_wire {
        line.push_str(&format!(
            " raw_wire_eps={:.0} ratio_same_wire={:.2} raw_wire_cpu_us_per_event={:.1}",
            w.eps,
            ratio(herald.eps, w.eps),
            w.cpu_us_per_event
        ));
    }
    line
}

/// A figure or `-` where it does not apply.
pub fn figure(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"))
}

/// The machine-readable line for a W1 throughput run of the bus on any transport.
pub fn w1_result_line(
    workload: &str,
    transport: &str,
    events: u64,
    herald_eps: f64,
    raw: Option<RawFigure>,
    cpu_us_per_event: Option<f64>,
) -> String {
    format!(
        "RESULT workload={workload} transport={transport} events={events} herald_eps={:.0} raw_eps={} ratio={} cpu_us_per_event={}",
        herald_eps,
        raw.map_or_else(|| "-".to_string(), |r| format!("{:.0}", r.eps)),
        raw.map_or_else(|| "-".to_string(), |r| format!("{:.2}", r.ratio)),
        figure(cpu_us_per_event),
    )
}

/// The baseline's rate and Herald's ratio to it, for [`w1_result_line`].
#[derive(Debug, Clone, Copy)]
pub struct RawFigure {
    /// The baseline's events per second.
    pub eps: f64,
    /// Herald's events per second divided by the baseline's (of one run, or the median of the
    /// rounds' ratios).
    pub ratio: f64,
}

/// The rounds of one benchmark invocation: Herald's rate, the baseline's (when run) and
/// Herald's CPU per event, each round. Reported as medians, with the median of the rounds'
/// ratios: on a shared machine that is steadier than the ratio of two medians, because each
/// round compares two runs a few seconds apart.
#[derive(Debug, Default)]
pub struct Rounds {
    herald: Vec<f64>,
    raw: Vec<f64>,
    ratios: Vec<f64>,
    cpu: Vec<f64>,
}

impl Rounds {
    /// Record one round.
    pub fn push(&mut self, herald_eps: f64, raw_eps: Option<f64>, cpu_us_per_event: f64) {
        self.herald.push(herald_eps);
        self.cpu.push(cpu_us_per_event);
        if let Some(r) = raw_eps.filter(|r| *r > 0.0) {
            self.raw.push(r);
            self.ratios.push(herald_eps / r);
        }
    }

    /// The `RESULT` line of the medians; `rounds=N` is added when there was more than one.
    pub fn result_line(&self, workload: &str, transport: &str, events: u64) -> String {
        let raw = (!self.raw.is_empty()).then(|| RawFigure {
            eps: median(&self.raw),
            ratio: median(&self.ratios),
        });
        let mut line = w1_result_line(
            workload,
            transport,
            events,
            median(&self.herald),
            raw,
            (!self.cpu.is_empty()).then(|| median(&self.cpu)),
        );
        if self.herald.len() > 1 {
            line.push_str(&format!(" rounds={}", self.herald.len()));
        }
        line
    }
}

/// The median of `v` (the mean of the middle two for an even count); 0 when empty.
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The latency result line; `raw` (plain amqprs, same run conditions) is printed beside it when
/// given, to show what the broker and the machine add on their own.
pub fn latency_line(l: &LatencyFigures, raw: Option<&LatencyFigures>) -> String {
    let mut line = format!(
        "RESULT workload=latency transport=rabbitmq events={} rate={} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        l.events, l.rate, l.p50_ms, l.p99_ms, l.max_ms
    );
    if let Some(r) = raw {
        line.push_str(&format!(
            " raw_p50_ms={:.2} raw_p99_ms={:.2} raw_max_ms={:.2}",
            r.p50_ms, r.p99_ms, r.max_ms
        ));
    }
    line
}

/// Measures a run: wall time and CPU.
pub(crate) struct Meter {
    wall: Instant,
    cpu: Duration,
    broker: Option<cpu::BrokerClock>,
}

impl Meter {
    pub fn start() -> Self {
        Self::start_for(Some("beam.smp"))
    }
    /// Measure with the clock of the local broker process named `comm`.
    pub fn start_for(comm: Option<&'static str>) -> Self {
        Self::start_with(comm.and_then(cpu::BrokerClock::start_for))
    }
    /// Measure with a broker clock the caller found (or none).
    pub fn start_with(broker: Option<cpu::BrokerClock>) -> Self {
        // The broker's clock first (the caller found it): finding its process reads /proc,
        // which neither the wall time nor the client's CPU time should count.
        Meter {
            cpu: cpu::process_cpu(),
            wall: Instant::now(),
            broker,
        }
    }
    pub fn finish(&self, events: u64) -> W1Figures {
        let elapsed = self.wall.elapsed();
        let cpu = cpu::process_cpu().saturating_sub(self.cpu);
        W1Figures {
            events,
            eps: events as f64 / elapsed.as_secs_f64().max(1e-9),
            cpu_us_per_event: cpu.as_secs_f64() * 1e6 / events.max(1) as f64,
            broker_us_per_event: self.broker.and_then(|b| b.us_per_event(events)),
            elapsed,
            publish_elapsed: Duration::ZERO,
        }
    }
    pub fn elapsed(&self) -> Duration {
        self.wall.elapsed()
    }
}

/// The `n`-th W1 event body: [`w1::OrderPlaced::sample`] as JSON, about 200 bytes. Raw amqprs
/// sends and decodes the same body the bus does, so both sides do the same JSON work and the
/// ratio compares the clients alone.
pub fn w1_body(n: u64) -> Vec<u8> {
    serde_json::to_vec(&w1::OrderPlaced::sample(n)).unwrap_or_default()
}

/// Percentile of sorted values.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// The broker the RabbitMQ benchmarks use: `HERALD_BENCH_AMQP_URL`, or the local default.
pub fn amqp_url() -> String {
    std::env::var("HERALD_BENCH_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

/// Connection arguments for the raw amqprs client, from [`amqp_url`]. Parsed here rather than
/// by amqprs, which does not percent-decode the vhost (`%2f` is `/`).
pub fn amqp_args(name: &str) -> Result<amqprs::connection::OpenConnectionArguments, String> {
    let raw = amqp_url();
    let url = url::Url::parse(&raw).map_err(|e| format!("bad AMQP URL: {e}"))?;
    let decode = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let user = if url.username().is_empty() {
        "guest".to_string()
    } else {
        decode(url.username())
    };
    let password = decode(url.password().unwrap_or("guest"));
    let vhost = match url.path().trim_start_matches('/') {
        "" => "/".to_string(),
        v => decode(v),
    };
    let mut args = amqprs::connection::OpenConnectionArguments::new(
        url.host_str().unwrap_or("127.0.0.1"),
        url.port().unwrap_or(5672),
        &user,
        &password,
    );
    args.virtual_host(&vhost).connection_name(name);
    Ok(args)
}

/// A fresh name for one run's exchange and queue.
pub(crate) fn run_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}.{}", &id[..8])
}

#[cfg(test)]
mod tests {
    #[test]
    fn w1_result_line_fills_dashes() {
        let l = super::w1_result_line("w1", "memory", 10, 1000.0, None, Some(2.5));
        assert_eq!(l, "RESULT workload=w1 transport=memory events=10 herald_eps=1000 raw_eps=- ratio=- cpu_us_per_event=2.5");
        let raw = super::RawFigure {
            eps: 500.0,
            ratio: 2.0,
        };
        let l = super::w1_result_line("w1", "rabbitmq", 10, 1000.0, Some(raw), None);
        assert!(l.contains("ratio=2.00") && l.contains("cpu_us_per_event=-"));
    }

    #[test]
    fn rounds_report_medians_and_the_median_ratio() {
        let mut r = super::Rounds::default();
        r.push(100.0, Some(100.0), 20.0);
        r.push(90.0, Some(60.0), 30.0);
        r.push(120.0, Some(200.0), 10.0);
        // Medians: Herald 100, raw 100, CPU 20; ratios 1.0, 1.5, 0.6 -> 1.0 (not 100/100 by
        // chance: the ratio of medians would hide a round's pairing).
        assert_eq!(
            r.result_line("w1", "rabbitmq", 5),
            "RESULT workload=w1 transport=rabbitmq events=5 herald_eps=100 raw_eps=100 ratio=1.00 cpu_us_per_event=20.0 rounds=3"
        );
        let mut one = super::Rounds::default();
        one.push(50.0, None, 2.5);
        assert_eq!(
            one.result_line("w1", "memory", 5),
            "RESULT workload=w1 transport=memory events=5 herald_eps=50 raw_eps=- ratio=- cpu_us_per_event=2.5"
        );
        assert_eq!(super::median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(super::median(&[]), 0.0);
    }

    #[test]
    fn body_is_about_200_bytes_of_the_bus_event() {
        let b = super::w1_body(12345);
        assert!((180..=220).contains(&b.len()), "{} bytes", b.len());
        let e: super::w1::OrderPlaced = serde_json::from_slice(&b).unwrap();
        assert_eq!(e.seq, 12345);
    }
}
