//! `herald chaos`.

use std::time::Duration;

use herald::Config;
use herald_check::QuiescenceOptions;

use crate::chaos::{self, ChaosOptions, ChaosReport, FaultSchedule};
use crate::CliResult;

/// The long `herald chaos --help`.
pub const LONG_HELP: &str = "Publish and consume on a broker while a fault command runs on a schedule, then judge the run.

The workload publishes --events events over --keys ordering keys (each key's events one after
another, each once the previous one is confirmed; a failed publish is sent again with the
same id) to the exchange `herald.chaos` (or --exchange), and one consumer (service
`chaos-consumer`, one handler call at a time) records every handling. From
--first-fault-after on, --fault-cmd runs with `sh -c` every --every (never two at once)
while publishing lasts. Then the run waits for quiescence (nothing ready, in flight or
delayed, and no new handling for --settle) and the history checker judges it by distinct
event ids:

  lost        confirmed by the broker and never handled
  duplicates  handlings beyond the first (at-least-once delivery)
  reordered   events handled after a later event of their key

The last line is for scripts:

  RESULT events=N lost=0 duplicates=D reordered=0 faults=F faults_failed=0 unconfirmed=U
  unexpected=X publish_p50_ms=.. publish_p99_ms=.. failover_p99_ms=.. stall_max_ms=.. recovery_max_ms=..
  events_per_second=.. seconds=.. quiescent=yes

failover_p99_ms is the p99 latency of the publishes started while a fault command ran;
stall_max_ms the longest a publish waited because of a fault; recovery_max_ms the longest
time from a fault's start until no publish was slow any more (slower than 5 x the p99 before
the first fault, and 200 ms). A publish is blamed on the last fault that started before it
completed. Each fault also gets a line on stderr. faults counts the fault commands that
succeeded, faults_failed those that exited non-zero (the run did not get the fault it asked
for). Exits with status 1 when an event was lost or reordered, a fault command failed, or the
run did not go quiet within --patience.

Example, against the 3-node cluster of scripts/cluster.sh:

  URLS=$(scripts/cluster.sh up | tail -1)
  herald chaos --broker \"$URLS\" --events 100000 --fault-cmd 'scripts/cluster.sh kill-random' --every 5s

See docs/high-availability.md.";

/// Run a publish/consume workload while a fault command runs on a schedule.
#[derive(clap::Args)]
pub struct Args {
    /// Confirmed events to publish
    #[arg(long, default_value_t = 10_000)]
    events: u64,
    /// Shell command that injects one fault (kill a node, cut a link, ...); none: a run
    /// without faults, e.g. for a throughput baseline
    #[arg(long)]
    fault_cmd: Option<String>,
    /// Time from one fault's start to the next (e.g. 5s, 500ms, 1m)
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    every: Duration,
    /// Time before the first fault [default: --every]
    #[arg(long, value_parser = parse_duration)]
    first_fault_after: Option<Duration>,
    /// Run at most this many faults [default: while publishing lasts]
    #[arg(long)]
    faults: Option<u64>,
    /// Ordering keys, each published in sequence by its own task
    #[arg(long, default_value_t = 16)]
    keys: u64,
    /// Events per second over all keys (0 = as fast as the broker confirms)
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Quiescence: the queues must stay empty and handlings stop this long before judging
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    settle: Duration,
    /// Give up waiting for quiescence after this long (what is missing then counts as lost)
    #[arg(long, default_value = "180s", value_parser = parse_duration)]
    patience: Duration,
    /// Give up a publish that is not confirmed in this long, over all its attempts
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    give_up_after: Duration,
    /// No progress lines
    #[arg(long)]
    quiet: bool,
}

/// `5s`, `500ms`, `2m`, `1.5s`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration; write e.g. 5s, 500ms or 2m"))?;
    let seconds = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("`{s}`: the unit must be ms, s or m")),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("`{s}` is not a duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

pub async fn run(config: Config, args: Args) -> CliResult<()> {
    if args.events == 0 {
        return Err("--events must be at least 1".into());
    }
    if args.every.is_zero() {
        return Err("--every must be more than 0".into());
    }
    let faults = args.fault_cmd.map(|command| FaultSchedule {
        command,
        every: args.every,
        first_after: args.first_fault_after.unwrap_or(args.every),
        limit: args.faults,
    });
    eprintln!(
        "herald chaos on {}: {} events over {} keys{}",
        crate::broker_display(&config),
        args.events,
        args.keys,
        match &faults {
            Some(f) => format!(", `{}` every {:?}", f.command, f.every),
            None => ", no faults".into(),
        }
    );
    let options = ChaosOptions {
        events: args.events,
        keys: args.keys,
        rate: args.rate,
        faults,
        quiescence: QuiescenceOptions {
            settle: args.settle,
            patience: args.patience,
            ..QuiescenceOptions::default()
        },
        give_up_after: args.give_up_after,
        progress: !args.quiet,
    };
    let report = chaos::run(config, options).await?;
    print_report(&report);
    let v = &report.verdict;
    if !v.is_ok() {
        return Err(format!("{} events lost, {} reordered", v.lost, v.reordered).into());
    }
    let failed = report.faults.iter().filter(|f| !f.succeeded).count();
    if failed > 0 {
        // A run that did not get its faults must not pass for one that survived them.
        return Err(format!(
            "{failed} of {} fault commands failed (see the `fault N:` lines): the run did not inject the faults it was asked for; check --fault-cmd (for a NATS cluster of scripts/cluster.sh, export HERALD_CLUSTER_BROKER=nats)",
            report.faults.len()
        )
        .into());
    }
    if !report.quiescence.reached {
        return Err("the run did not go quiet within --patience; the verdict may be early".into());
    }
    Ok(())
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| d.as_millis().to_string())
}

fn print_report(r: &ChaosReport) {
    for (i, f) in r.faults.iter().enumerate() {
        eprintln!(
            "fault {} at {:.1}s ({}, {:.1}s): {} publishes during it, p99 {} ms, max {} ms; longest publish wait {} ms; publishing back to normal after {} ms; longest pause in handling {} ms",
            i + 1,
            f.started.as_secs_f64(),
            if f.succeeded { "ok" } else { "failed" },
            f.took.as_secs_f64(),
            f.publishes,
            ms(f.publish_p99),
            ms(f.publish_max),
            f.stall.as_millis(),
            f.recovery.as_millis(),
            f.handling_gap.as_millis()
        );
    }
    eprintln!("\n{}", r.verdict);
    let v = &r.verdict;
    let rate = v.events as f64 / r.publishing.as_secs_f64().max(1e-9);
    let recovery_max = r.faults.iter().map(|f| f.recovery).max();
    let stall_max = r.faults.iter().map(|f| f.stall).max();
    println!(
        "RESULT events={} lost={} duplicates={} reordered={} faults={} faults_failed={} unconfirmed={} unexpected={} publish_p50_ms={} publish_p99_ms={} failover_p99_ms={} stall_max_ms={} recovery_max_ms={} events_per_second={:.0} seconds={:.1} quiescent={}",
        v.events,
        v.lost,
        v.duplicates,
        v.reordered,
        r.faults.iter().filter(|f| f.succeeded).count(),
        r.faults.iter().filter(|f| !f.succeeded).count(),
        v.unconfirmed,
        v.unexpected,
        ms(r.publish_p50),
        ms(r.publish_p99),
        ms(r.failover_p99),
        ms(stall_max),
        ms(recovery_max),
        rate,
        r.elapsed.as_secs_f64(),
        if r.quiescence.reached { "yes" } else { "no" }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
