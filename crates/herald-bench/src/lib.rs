//! Herald's benchmark workloads. Each prints a `RESULT` line that scripts read:
//!
//! `RESULT workload=w1 transport=sqlite events=50000 herald_eps=... raw_eps=- ratio=- cpu_us_per_event=...`
//!
//! W1: N events of about 200 bytes of JSON published to the topic exchange with durable
//! acceptance, consumed by one subscription that acknowledges after decoding. Figures:
//! published/s, end-to-end/s (first publish to last ack) and client CPU time per event.

pub mod cpu;
pub mod w1;

/// A figure or `-` where it does not apply.
pub fn figure(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"))
}

/// The machine-readable line for a throughput run.
pub fn result_line(
    workload: &str,
    transport: &str,
    events: u64,
    herald_eps: f64,
    raw_eps: Option<f64>,
    cpu_us_per_event: Option<f64>,
) -> String {
    let ratio = raw_eps.filter(|r| *r > 0.0).map(|r| herald_eps / r);
    format!(
        "RESULT workload={workload} transport={transport} events={events} herald_eps={:.0} raw_eps={} ratio={} cpu_us_per_event={}",
        herald_eps,
        raw_eps.map_or_else(|| "-".to_string(), |v| format!("{v:.0}")),
        ratio.map_or_else(|| "-".to_string(), |v| format!("{v:.2}")),
        figure(cpu_us_per_event),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn result_line_fills_dashes() {
        let l = super::result_line("w1", "memory", 10, 1000.0, None, Some(2.5));
        assert_eq!(l, "RESULT workload=w1 transport=memory events=10 herald_eps=1000 raw_eps=- ratio=- cpu_us_per_event=2.5");
        let l = super::result_line("w1", "rabbitmq", 10, 1000.0, Some(500.0), None);
        assert!(l.contains("ratio=2.00") && l.contains("cpu_us_per_event=-"));
    }
}
