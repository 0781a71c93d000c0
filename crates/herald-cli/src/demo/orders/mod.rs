//! `herald demo --system orders`: order fulfilment, event-sourced, on `herald-es`.
//!
//! Order placed → inventory reserved → payment captured → shipment dispatched → order completed.
//! A declined payment is compensated (the reservation released, the order cancelled); a payment
//! that never answers, or answers too late, times out (same compensation, and the payment voided
//! or refunded). Every step is an aggregate's event in the store, published through the outbox;
//! the fulfilment saga sends the next command; a projection keeps orders by status. The run ends
//! with a check of every order against the store:
//! `RESULT orders=.. completed=.. compensated=.. timed_out=.. stuck=.. lost=.. duplicates_applied=.. refunded=..`.
//!
//! `--role workers` runs the saga, its timeouts, the projection and a relay alone (the process
//! the fault test kills); `--role driver` the services, the orders and the check.

mod domain;
mod read_model;
mod services;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::Config;
use herald_es::saga::{InstanceQuery, Saga, SagaStatus};
use herald_es::{Database, Metadata, Repository};

use self::domain::{Fulfilment, GatewayAnswer, Order, OrderCommand, OrderPlaced, Payment};
use self::services::{gateway, Gateway};
use crate::CliResult;

/// The default store of the embedded demo.
pub const DEFAULT_DATABASE: &str = "sqlite://.herald/orders.db";

/// The options of `herald demo` that pick and shape the orders system.
#[derive(clap::Args, Debug, Clone)]
pub struct OrdersArgs {
    /// The reference system: knowledge-nest (reference 003), or orders (order fulfilment with
    /// event sourcing, a projection and a saga; docs/event-sourcing.md)
    #[arg(long, default_value = "knowledge-nest", value_parser = ["knowledge-nest", "orders"])]
    pub system: String,
    /// orders: the event store, sqlite://PATH or postgres://USER@HOST/DB#SCHEMA (or a libpq
    /// conninfo) [default: sqlite://.herald/orders.db]
    #[arg(long)]
    pub database: Option<String>,
    /// orders: how long the saga waits for the payment service before cancelling the order
    /// (the simulated gateway's late answers come half of it later: give both roles the same)
    #[arg(long, default_value_t = 2000)]
    pub payment_timeout_ms: u64,
    /// orders: run one part only: `workers` (saga, timeouts, projection, relay) or `driver`
    /// (services, orders, the final check), for running them as separate processes
    #[arg(long, hide = true, default_value = "all", value_parser = ["all", "driver", "workers"])]
    pub role: String,
}

/// What the orders system was asked to do.
pub struct OrdersOptions {
    /// Place this many orders, wait for them, check them, exit. None: until Ctrl-C.
    pub events: Option<u64>,
    /// Orders per second (0: as fast as they go).
    pub rate: u64,
    /// Progress lines.
    pub progress: bool,
    /// Serve the dashboard here.
    pub listen: Option<std::net::SocketAddr>,
}

/// The final figures.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub orders: u64,
    pub completed: u64,
    pub compensated: u64,
    pub timed_out: u64,
    pub stuck: u64,
    pub lost: u64,
    pub duplicates_applied: u64,
    /// Payments captured after their order was called off, and given back.
    pub refunded: u64,
}

impl Report {
    /// The line scripts read (keep the keys).
    pub fn result_line(&self) -> String {
        format!(
            "RESULT orders={} completed={} compensated={} timed_out={} stuck={} lost={} duplicates_applied={} refunded={}",
            self.orders,
            self.completed,
            self.compensated,
            self.timed_out,
            self.stuck,
            self.lost,
            self.duplicates_applied,
            self.refunded
        )
    }
}

/// Run the orders system in the role asked for.
pub async fn run(config: Config, args: &OrdersArgs, options: OrdersOptions) -> CliResult<()> {
    domain::set_payment_timeout(Duration::from_millis(args.payment_timeout_ms));
    let url = args
        .database
        .clone()
        .unwrap_or_else(|| DEFAULT_DATABASE.to_string());
    let db = herald_es::open(&url, "order-service", herald_es::Upcasters::new()).await?;
    eprintln!(
        "herald demo --system orders: store {} ({}), broker {}",
        redact(&url),
        db.kind(),
        crate::broker_display(&config)
    );
    match args.role.as_str() {
        "workers" => {
            let workers = services::start_workers(&config, &db).await?;
            println!("READY");
            herald::bus::wait_for_signal().await;
            workers.stop().await
        }
        role => {
            let workers = match role {
                "all" => Some(services::start_workers(&config, &db).await?),
                _ => None,
            };
            let dashboard = match options.listen {
                Some(addr) => Some(dashboard(&config, &db, addr).await?),
                None => None,
            };
            let buses = services::start_services(&config, &db).await?;
            let report = drive(&db, &options).await;
            for b in buses {
                b.shutdown().await?;
            }
            if let Some(w) = workers {
                w.stop().await?;
            }
            if let Some(d) = dashboard {
                d.stop().await?;
            }
            let (report, elapsed) = report?;
            eprintln!(
                "\n{} orders: {} completed, {} compensated (payment declined), {} timed out (no payment answer); {} stuck, {} lost, {} events applied twice ({:.1}s)",
                report.orders, report.completed, report.compensated, report.timed_out, report.stuck, report.lost, report.duplicates_applied, elapsed.as_secs_f64()
            );
            eprintln!("saga instances: herald sagas --database {}", redact(&url));
            println!("{}", report.result_line());
            if report.lost > 0 || report.stuck > 0 || report.duplicates_applied > 0 {
                return Err("the orders system lost, stuck or double-applied orders".into());
            }
            Ok(())
        }
    }
}

/// The URL without a password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

async fn dashboard(
    config: &Config,
    db: &Database,
    listen: std::net::SocketAddr,
) -> CliResult<crate::commands::serve::Running> {
    let mut serve = herald_http::serve::ServeConfig::new(listen);
    serve.extra = herald_http::serve::sagas::router(db.sagas());
    let running = crate::commands::serve::start(config, serve, true).await?;
    eprintln!(
        "dashboard: {}  (saga instances: GET /api/sagas)",
        running.login_url()
    );
    Ok(running)
}

/// Place the orders, follow them, check them.
async fn drive(db: &Database, options: &OrdersOptions) -> CliResult<(Report, Duration)> {
    let run = format!("{:08x}", rand::random::<u32>());
    let orders = Repository::<Order>::new(db.events());
    let stop = stop_on_ctrl_c();
    let started = Instant::now();
    let interval = (options.rate > 0).then(|| Duration::from_secs_f64(1.0 / options.rate as f64));
    let mut next_at = Instant::now();
    let mut placed = 0u64;
    let mut last_progress = Instant::now();
    while options.events.is_none_or(|n| placed < n) && !stop.load(Ordering::Relaxed) {
        let order_id = format!("{run}-{placed}");
        let e = OrderPlaced {
            order_id: order_id.clone(),
            sku: format!("SKU-{}", placed % 17),
            quantity: 1 + (placed % 3) as u32,
            amount_cents: 1000 + (placed % 50) * 100,
        };
        orders
            .handle(&order_id, &OrderCommand::Place(e), &Metadata::new())
            .await?;
        placed += 1;
        if let Some(iv) = interval {
            next_at += iv;
            if let Some(wait) = next_at.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
        }
        if options.progress && last_progress.elapsed() >= Duration::from_millis(500) {
            last_progress = Instant::now();
            progress(db, &run, placed).await;
        }
    }
    // Wait until every order finished (or nothing moves for a minute).
    let mut last_finished = (0, Instant::now());
    loop {
        let rows = read_model::rows(db, &run).await?;
        let finished = rows
            .iter()
            .filter(|r| terminal(&r.status).is_some())
            .count() as u64;
        let active = active_sagas(db, &run).await?;
        if options.progress {
            eprintln!("  placed {placed:>6}  finished {finished:>6}  sagas running {active:>5}");
        }
        if finished >= placed && active == 0 {
            break;
        }
        if finished != last_finished.0 {
            last_finished = (finished, Instant::now());
        } else if last_finished.1.elapsed() > Duration::from_secs(60) {
            eprintln!("no order finished for a minute; checking what there is");
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let elapsed = started.elapsed();
    Ok((check(db, &run, placed).await?, elapsed))
}

async fn progress(db: &Database, run: &str, placed: u64) {
    if let Ok(rows) = read_model::rows(db, run).await {
        let mut by: HashMap<&str, u64> = HashMap::new();
        for r in &rows {
            *by.entry(terminal(&r.status).unwrap_or("in flight"))
                .or_default() += 1;
        }
        eprintln!(
            "  placed {placed:>6}  completed {:>6}  compensated {:>5}  timed out {:>5}  in flight {:>5}",
            by.get("completed").unwrap_or(&0),
            by.get("compensated").unwrap_or(&0),
            by.get("timed_out").unwrap_or(&0),
            placed.saturating_sub(by.values().sum::<u64>() - by.get("in flight").unwrap_or(&0)),
        );
    }
}

/// The outcome a read-model status means, if it is final.
fn terminal(status: &str) -> Option<&'static str> {
    match status {
        "completed" => Some("completed"),
        "cancelled:payment_declined" => Some("compensated"),
        "cancelled:payment_timeout" => Some("timed_out"),
        _ => None,
    }
}

/// What the order's number says must happen to it.
fn expected(order_id: &str) -> &'static str {
    match gateway(order_id) {
        Gateway::Answers(GatewayAnswer::Captured) => "completed",
        Gateway::Answers(GatewayAnswer::Declined) => "compensated",
        Gateway::Silent | Gateway::CapturesLate => "timed_out",
    }
}

async fn active_sagas(db: &Database, run: &str) -> CliResult<u64> {
    let query = InstanceQuery {
        saga: Some(Fulfilment::NAME.into()),
        limit: 1_000_000,
        ..InstanceQuery::default()
    };
    Ok(db
        .sagas()
        .instances(&query)
        .await?
        .iter()
        .filter(|i| i.instance_id.starts_with(run) && i.status == SagaStatus::Active)
        .count() as u64)
}

/// Check every order of the run against the store: its final event, its saga, its read-model
/// row and the number of events the row applied.
async fn check(db: &Database, run: &str, placed: u64) -> CliResult<Report> {
    let store = db.events();
    let rows: HashMap<String, read_model::Row> = read_model::rows(db, run)
        .await?
        .into_iter()
        .map(|r| (r.order_id.clone(), r))
        .collect();
    let mut report = Report {
        orders: placed,
        stuck: active_sagas(db, run).await?,
        ..Report::default()
    };
    for n in 0..placed {
        let id = format!("{run}-{n}");
        let mut stored = 0u64;
        let mut outcome = None;
        for kind in ["order", "reservation", "payment", "shipment"] {
            let events = store.read_stream(&format!("{kind}-{id}"), 0).await?;
            stored += events.len() as u64;
            if kind == "order" {
                outcome = events.last().and_then(|e| match e.event_type() {
                    "order.completed" => Some("completed"),
                    "order.cancelled" => match e.envelope.body_value()["reason"].as_str() {
                        Some("payment_declined") => Some("compensated"),
                        Some("payment_timeout") => Some("timed_out"),
                        _ => None,
                    },
                    _ => None,
                });
            }
        }
        let row = rows.get(&id);
        let shown = row.and_then(|r| terminal(&r.status));
        let applied = row.map(|r| r.events_applied).unwrap_or(0);
        report.duplicates_applied += applied.saturating_sub(stored);
        // A payment answered after the timeout (a loaded machine, a short timeout) ends its
        // order as timed out: the saga's answer to a late payment, not a loss, as long as no
        // money is kept (checked below).
        let want = match (gateway(&id), outcome) {
            (_, Some("timed_out")) => "timed_out",
            // A late capture can still come before the timeout fires (timeouts fire when the
            // saga's poller runs): the order then completes.
            (Gateway::CapturesLate, Some("completed")) => "completed",
            _ => expected(&id),
        };
        if outcome != Some(want) || shown != Some(want) || applied < stored {
            report.lost += 1;
            if report.lost <= 5 {
                eprintln!(
                    "order {id}: expected {want}, the store says {outcome:?}, the read model {:?} ({applied} of {stored} events applied)",
                    row.map(|r| r.status.as_str())
                );
            }
            continue;
        }
        // The money: kept for a completed order, never for a cancelled one (a void or refund
        // may still be on its way: give it a few seconds).
        let (charged, refunded) = payment(&store, &id, want == "completed").await?;
        if charged != (want == "completed") {
            report.lost += 1;
            if report.lost <= 5 {
                eprintln!("order {id}: {want}, but its payment is charged={charged}");
            }
            continue;
        }
        report.refunded += u64::from(refunded);
        match want {
            "completed" => report.completed += 1,
            "compensated" => report.compensated += 1,
            _ => report.timed_out += 1,
        }
    }
    Ok(report)
}

/// Whether order `id`'s payment keeps the customer's money, and whether it was refunded; read
/// again for up to 10 s while it disagrees with `want_charged`.
async fn payment(
    store: &Arc<dyn herald_es::EventStore>,
    id: &str,
    want_charged: bool,
) -> CliResult<(bool, bool)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let payments = Repository::<Payment>::new(store.clone());
    loop {
        let payment = payments.load(id).await?.state;
        let charged = payment.charged();
        if charged == want_charged || Instant::now() >= deadline {
            return Ok((charged, payment.refunded));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn stop_on_ctrl_c() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nstopping: placing no more orders, waiting for those placed…");
            flag.store(true, Ordering::Relaxed);
        }
    });
    stop
}
