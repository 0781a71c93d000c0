//! `herald`: run the reference system, publish, tail, manage dead letters and topology, bench.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use herald::Config;

mod chaos;
mod commands;
mod demo;
mod logging;

/// jemalloc: an event is allocated on the thread that publishes it and freed on the one that
/// handles it, which glibc's malloc serializes on its arena lock; with jemalloc W1 on
/// `memory://` runs about twice as fast (docs/benchmarks.md, "Allocator").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Errors from commands: printed as one line, exit status 1.
pub type CliResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Herald: typed events on a broker, from the command line.
///
/// Every command takes --broker (or HERALD_BROKER, or `broker` in herald.toml):
/// sqlite://PATH (the default, .herald/herald.db), memory://, amqp://user:pass@host:5672/vhost,
/// nats://host:4222, kafka://host:9092[,host2:9092].
#[derive(Parser)]
#[command(name = "herald", version, about, long_about = None)]
struct Cli {
    /// Broker URL [default: sqlite://.herald/herald.db]
    #[arg(long, global = true, env = "HERALD_BROKER", hide_env_values = true)]
    broker: Option<String>,
    /// Topic exchange name [default: herald.events]
    #[arg(long, global = true, env = "HERALD_EXCHANGE")]
    exchange: Option<String>,
    /// Configuration file [default: ./herald.toml if present]
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Seconds a one-shot command (publish, dlq, topology --live, tail) waits for the broker
    /// before it fails [default: connect_timeout_ms in herald.toml, else 5]
    #[arg(long, global = true, value_name = "SECONDS")]
    connect_timeout: Option<f64>,
    /// Log filter, e.g. `info` or `herald=debug` (also RUST_LOG)
    #[arg(long, global = true, default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the reference system (KnowledgeNest: 3 publishers, 2 consumers, one failing
    /// intermittently) with a progress display and a final report.
    Demo(commands::demo::Args),
    /// Publish one event with a JSON body.
    Publish(commands::publish::Args),
    /// Print events matching a routing-key pattern as they arrive (`*` one word, `#` any), whatever their body (one that is not JSON shows as text).
    Tail(commands::tail::Args),
    /// List, show, replay and purge dead letters.
    #[command(subcommand)]
    Dlq(commands::dlq::Command),
    /// The transactional outbox on PostgreSQL: status, table triggers, a relay
    #[command(subcommand)]
    Outbox(commands::outbox::Command),
    /// Event-sourcing projections (herald-es): list them with their lag, rebuild one
    #[command(subcommand)]
    Projections(commands::projections::Command),
    /// Saga instances (herald-es) with state and age; --stuck lists the stuck ones
    Sagas(commands::sagas::Args),
    /// Print the topology the demo declares, or the live queues on the broker.
    Topology(commands::topology::Args),
    /// Run benchmark workload W1 and print a RESULT line.
    Bench(commands::bench::Args),
    /// Publish and consume while a fault command runs on a schedule; judge the run by event ids
    /// (lost, duplicates, reordered) and print a RESULT line.
    #[command(long_about = commands::chaos::LONG_HELP, verbatim_doc_comment)]
    Chaos(commands::chaos::Args),
    /// Serve the HTTP API and web dashboard (docs/http-api.md).
    Serve(commands::serve::Args),
    /// Generate the event catalog (HTML, JSON, Markdown) and an AsyncAPI 3.0 document.
    Docs(commands::docs::Args),
}

fn load_config(cli: &Cli) -> CliResult<Config> {
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(b) = &cli.broker {
        config.broker = b.clone();
    }
    if let Some(e) = &cli.exchange {
        config.exchange = e.clone();
    }
    if let Some(secs) = cli.connect_timeout {
        if !(secs > 0.0 && secs.is_finite()) {
            return Err("--connect-timeout must be a positive number of seconds".into());
        }
        config.connect_timeout_ms = (secs * 1000.0).ceil() as u64;
    }
    config.validate()?;
    Ok(config)
}

/// The broker URL to show a person: redacted, and the default spelled out.
pub fn broker_display(config: &Config) -> String {
    if config.broker.is_empty() {
        format!("sqlite://{}", herald::transport::DEFAULT_SQLITE_PATH)
    } else {
        config.broker_redacted()
    }
}

/// Make every transport this build ships open its URL schemes.
fn register_transports() {
    #[cfg(feature = "rabbitmq")]
    herald_rabbitmq::register();
    #[cfg(feature = "nats")]
    herald_nats::register();
    #[cfg(feature = "kafka")]
    herald_kafka::register();
}

async fn run(cli: Cli) -> CliResult<()> {
    register_transports();
    let config = load_config(&cli)?;
    match cli.command {
        Command::Demo(args) => commands::demo::run(config, args).await,
        Command::Publish(args) => commands::publish::run(config, args).await,
        Command::Tail(args) => commands::tail::run(config, args).await,
        Command::Dlq(cmd) => commands::dlq::run(config, cmd).await,
        Command::Outbox(cmd) => commands::outbox::run(config, cmd).await,
        Command::Projections(cmd) => commands::projections::run(config, cmd).await,
        Command::Sagas(args) => commands::sagas::run(config, args).await,
        Command::Topology(args) => commands::topology::run(config, args).await,
        Command::Bench(args) => commands::bench::run(config, args).await,
        Command::Chaos(args) => commands::chaos::run(config, args).await,
        Command::Serve(args) => commands::serve::run(config, args).await,
        Command::Docs(args) => commands::docs::run(config, args).await,
    }
}

fn main() -> ExitCode {
    // Like any Unix filter: `herald tail '#' | head` ends quietly when the reader goes away.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| cli.log.clone());
    let _logging = logging::init(&filter);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
