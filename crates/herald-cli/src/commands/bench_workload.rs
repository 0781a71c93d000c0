//! `herald bench --workload append|saga`: the event store's workloads (herald-es), each with
//! its figure printed as a `RESULT` line. `w1` stays in `bench.rs`.

use herald::Config;

use crate::CliResult;

/// Concurrent writers of the `append` workload's single-event appends.
const WRITERS: usize = 8;
/// Events per append in the `append` workload's batches.
const BATCH: usize = 100;

/// Run workload `workload` (`append` or `saga`) on the store `database`.
pub async fn run(
    config: &Config,
    workload: &str,
    database: Option<&str>,
    events: u64,
) -> CliResult<()> {
    let database = database.ok_or_else(|| {
        format!(
            "--workload {workload} needs --database postgres://USER@HOST/DB (or a libpq conninfo)"
        )
    })?;
    if database.starts_with("sqlite://") {
        return Err(format!(
            "--workload {workload} measures PostgreSQL against raw tokio-postgres; give a postgres:// URL"
        )
        .into());
    }
    match workload {
        "append" => {
            let f = herald_bench::append::run(database, events, WRITERS, BATCH).await?;
            eprintln!(
                "append, {events} events each way: single-event appends ({WRITERS} writers) Herald {:.0}/s, raw {:.0}/s; batches of {BATCH} to one stream Herald {:.0}/s, raw {:.0}/s",
                f.single_herald_eps, f.single_raw_eps, f.batch_herald_eps, f.batch_raw_eps
            );
            println!("{}", f.result_line(WRITERS, BATCH));
        }
        "saga" => {
            let amqp = config.broker.split(',').next().unwrap_or_default();
            if !(amqp.starts_with("amqp://") || amqp.starts_with("amqps://")) {
                return Err(
                    "--workload saga runs on RabbitMQ: give --broker amqp://USER:PASS@HOST:5672/%2f"
                        .into(),
                );
            }
            // HERALD_BENCH_OUTBOX_NOTIFY=0 turns the outbox's NOTIFY trigger off for the run.
            let f = herald_bench::saga::run(
                database,
                amqp,
                events,
                std::env::var("HERALD_BENCH_OUTBOX_NOTIFY").as_deref() != Ok("0"),
            )
            .await?;
            eprintln!(
                "saga: {} transitions, {:.0}/s; projection catch-up over {} events, {:.0}/s",
                f.transitions, f.transitions_per_sec, f.catch_up_events, f.catch_up_eps
            );
            println!("{}", f.result_line());
        }
        other => {
            return Err(format!("no workload `{other}`: use w1, append or saga").into());
        }
    }
    Ok(())
}
