//! Process CPU time (user + system), for CPU-per-event figures.

use std::time::Duration;

/// CPU time this process has used so far.
pub fn process_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we own; RUSAGE_SELF is always valid.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut u) != 0 {
            return Duration::ZERO;
        }
        u
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// The CPU clock of a broker on this host (RabbitMQ's `beam.smp`, `nats-server`, ...), started
/// at a reading: the broker shares the machine's cores with the client, so its CPU per event
/// decides the end-to-end rate as much as the client's does. Found once and read again by pid,
/// so both readings are of the same process.
#[derive(Debug, Clone, Copy)]
pub struct BrokerClock {
    pid: u32,
    comm: &'static str,
    ticks: u64,
    start: Duration,
}

/// The process name of the broker a URL names, when it is one Herald knows to measure.
pub fn broker_process(url: &str) -> Option<&'static str> {
    match herald::transport::scheme_of(url)? {
        "amqp" | "amqps" => Some("beam.smp"),
        "nats" | "tls" => Some("nats-server"),
        "kafka" => Some("tansu"),
        _ => None,
    }
}

impl BrokerClock {
    /// Start at the `beam.smp` process that has used the most CPU (the broker, not a
    /// short-lived `rabbitmqctl`, which is a `beam.smp` too); `None` when there is none.
    pub fn start() -> Option<Self> {
        Self::start_for("beam.smp")
    }

    /// The clock of the broker a URL names when it runs here (see [`broker_process`]).
    pub fn for_broker_url(url: &str) -> Option<Self> {
        broker_process(url).and_then(Self::start_for)
    }

    /// Start at the process named `comm` that has used the most CPU.
    pub fn start_for(comm: &'static str) -> Option<Self> {
        let ticks = clock_ticks()?;
        let (pid, start) = std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .filter_map(|entry| {
                let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
                Some((pid, stat_cpu(&stat, comm, ticks)?))
            })
            .max_by_key(|(_, cpu)| *cpu)?;
        Some(BrokerClock {
            pid,
            comm,
            ticks,
            start,
        })
    }

    /// CPU time the broker has used since [`start`](Self::start); `None` once its process is
    /// gone.
    pub fn elapsed(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        stat_cpu(&stat, self.comm, self.ticks)?.checked_sub(self.start)
    }

    /// Broker CPU per event since the start, in microseconds.
    pub fn us_per_event(&self, events: u64) -> Option<f64> {
        Some(self.elapsed()?.as_secs_f64() * 1e6 / events.max(1) as f64)
    }
}

/// Clock ticks per second, the unit of `/proc/<pid>/stat`'s CPU times.
fn clock_ticks() -> Option<u64> {
    // SAFETY: sysconf reads a configuration value; it has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0)
}

/// User + system time from one `/proc/<pid>/stat` line, when the process's name is `comm`.
fn stat_cpu(stat: &str, comm: &str, ticks: u64) -> Option<Duration> {
    // The name sits in parentheses and may itself hold spaces or parentheses: split at the last.
    let (head, rest) = stat.rsplit_once(')')?;
    if head.split_once('(')?.1 != comm {
        return None;
    }
    // After the name: state (field 3) ... utime (14) and stime (15).
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let total = utime + stime;
    Some(
        Duration::from_secs(total / ticks)
            + Duration::from_nanos((total % ticks) * 1_000_000_000 / ticks),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_cpu_times_from_a_stat_line() {
        let line = "1234 (beam.smp) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 30 0 1000";
        assert_eq!(
            super::stat_cpu(line, "beam.smp", 100),
            Some(std::time::Duration::from_secs(3))
        );
        assert_eq!(super::stat_cpu(line, "bash", 100), None);
        assert_eq!(super::stat_cpu("garbage", "beam.smp", 100), None);
    }

    /// The test command starts RabbitMQ on this host, so its broker is there to find.
    #[test]
    fn finds_the_local_broker_and_reads_it_again() {
        let clock = super::BrokerClock::start().expect("a beam.smp runs here");
        assert!(clock.elapsed().is_some(), "read again by pid");
    }

    #[test]
    fn cpu_time_grows() {
        let before = super::process_cpu();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(super::process_cpu() > before);
    }
}
