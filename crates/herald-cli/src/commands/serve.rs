//! `herald serve`: the HTTP API and web dashboard (`docs/http-api.md`), and the server that
//! `herald demo` starts beside the reference system.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use herald::{Bus, Config};
use herald_http::serve::{ServeConfig, Server};
use herald_outbox::health::RelayHealth;
use herald_outbox::postgres::PgOutbox;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::CliResult;

/// The default `--listen` address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7878";

/// Serve the HTTP API and web dashboard.
#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on; anything but loopback requires --token
    #[arg(long, default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Bearer token required by /api/* and /metrics [default: a random one, printed in the
    /// dashboard's login link]
    #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A host name the server answers to besides IP addresses and localhost (its own DNS name,
    /// or a reverse proxy's); repeatable. Requests naming other hosts are refused, which stops
    /// DNS-rebinding pages
    #[arg(long = "allow-host", value_name = "NAME")]
    allowed_hosts: Vec<String>,
    /// Event catalog JSON (`herald docs --format json`): shown on the dashboard, validates
    /// published bodies
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// PostgreSQL conninfo of an outbox to report on (/api/outbox, /health/ready)
    #[arg(long)]
    outbox_database: Option<String>,
    /// Schema of the outbox table
    #[arg(long, default_value = "public", requires = "outbox_database")]
    outbox_schema: String,
    /// Name of the outbox table
    #[arg(long, default_value = "herald_outbox", requires = "outbox_database")]
    outbox_table: String,
}

pub async fn run(config: Config, args: Args) -> CliResult<()> {
    let catalog = match &args.catalog {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the catalog {}: {e}", path.display()))?;
            Some(
                serde_json::from_str(&text)
                    .map_err(|e| format!("the catalog {} is not JSON: {e}", path.display()))?,
            )
        }
        None => None,
    };
    let outbox = match &args.outbox_database {
        Some(db) => Some(RelayHealth::postgres(
            db.clone(),
            PgOutbox::new("herald-serve")?
                .schema(&args.outbox_schema)?
                .table(&args.outbox_table)?,
        )),
        None => None,
    };
    let mut serve = ServeConfig::new(args.listen);
    serve.token = args.token;
    serve.allowed_hosts = args.allowed_hosts;
    serve.catalog = catalog;
    serve.outbox = outbox;
    let running = start(&config, serve, false).await?;
    // Listen for the signals before printing the URL: a script that reads the URL and stops
    // the server at once must not find the default disposition (killed, exit status 143).
    let stop = stop_signal();
    eprintln!(
        "herald serve on {}\ndashboard: {} (Ctrl-C to stop)",
        crate::broker_display(&config),
        running.login_url()
    );
    stop.await;
    running.stop().await
}

/// SIGINT or SIGTERM, listened for from the moment this is called (not from its first poll).
fn stop_signal() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            return Box::pin(async move {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            });
        }
    }
    Box::pin(herald::bus::wait_for_signal())
}

/// A server running in the background on its own bus.
pub struct Running {
    bus: Bus,
    login_url: String,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), herald_http::Error>>,
}

impl Running {
    /// The URL to print: with a generated token, the login link carrying it (`#token=`).
    pub fn login_url(&self) -> &str {
        &self.login_url
    }

    /// Stop serving and shut the server's bus down.
    pub async fn stop(self) -> CliResult<()> {
        self.cancel.cancel();
        let served = self.task.await;
        self.bus.shutdown().await?;
        served.map_err(|e| format!("the HTTP server task failed: {e}"))??;
        Ok(())
    }
}

/// Open a bus (service `herald-serve`) and start serving on it. With `fallback`, an address in
/// use falls back to an ephemeral port on the same interface, with a warning.
///
/// Installs the Prometheus recorder first, so every bus this process builds afterwards (the
/// demo's too) reports to `/metrics`, and samples queue depths every 5 s.
pub async fn start(config: &Config, mut serve: ServeConfig, fallback: bool) -> CliResult<Running> {
    let prometheus = herald_http::metrics::install_prometheus()?;
    serve.extra = std::mem::take(&mut serve.extra).merge(herald_http::metrics::router(prometheus));
    let bus = Bus::builder()
        .config(config.clone())
        .service("herald-serve")
        .sample_queue_depth(Duration::from_secs(5))
        .build()
        .await?;
    let listen = serve.listen;
    let server = match Server::new(bus.clone(), serve.clone()).await {
        Err(herald_http::Error::Bind { source, .. })
            if fallback && source.kind() == std::io::ErrorKind::AddrInUse =>
        {
            let any = SocketAddr::new(listen.ip(), 0);
            eprintln!("warning: {listen} is in use; serving the dashboard on an ephemeral port");
            Server::new(
                bus.clone(),
                ServeConfig {
                    listen: any,
                    ..serve
                },
            )
            .await
        }
        other => other,
    };
    let server = match server {
        Ok(s) => s,
        Err(e) => {
            bus.shutdown().await?;
            return Err(e.into());
        }
    };
    let login_url = server.login_url();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(server.serve(cancel.clone()));
    Ok(Running {
        bus,
        login_url,
        cancel,
        task,
    })
}

/// The dashboard beside `herald demo`: the demo's catalog, the given address or an ephemeral
/// port when it is taken. Prints the URL.
pub async fn start_for_demo(config: &Config, listen: SocketAddr) -> CliResult<Running> {
    let mut serve = ServeConfig::new(listen);
    serve.catalog = Some(crate::demo::catalog(config).await?.to_json());
    let running = start(config, serve, true).await?;
    eprintln!("dashboard: {}", running.login_url());
    Ok(running)
}
