//! The order system's processes: the domain services (command handlers on their aggregates), and
//! the workers (the fulfilment saga, its timeouts, the read model, the outbox relay). Each
//! service has its own bus, as it would have its own process in production.

use std::sync::Arc;
use std::time::Duration;

use herald::middleware::RetryPolicy;
use herald::{Bus, Config, Context, HandlerError, SubscribeOptions};
use herald_es::postgres::PgProjector;
use herald_es::projection::ProjectionRunner;
use herald_es::saga::SagaRunner;
use herald_es::sqlite::SqliteProjector;
use herald_es::{Aggregate, Database, Metadata, Repository};
use herald_outbox::{Relay, RelayConfig};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::domain::*;
use super::read_model::OrdersByStatus;
use crate::CliResult;

/// A service's bus. On the embedded broker a killed process's unacknowledged messages come back
/// after the lease: 3 s here, so a restart picks up within seconds.
pub async fn bus(config: &Config, service: &str) -> CliResult<Bus> {
    let mut builder = Bus::builder().config(config.clone()).service(service);
    let url = if config.broker.is_empty() {
        format!("sqlite://{}", herald::transport::DEFAULT_SQLITE_PATH)
    } else {
        config.broker.clone()
    };
    if let Some(path) = url.strip_prefix("sqlite://") {
        let path = std::path::Path::new(path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let options = herald::transport::sqlite::SqliteOptions {
            lease: Duration::from_secs(3),
            ..Default::default()
        };
        let transport =
            herald::transport::sqlite::SqliteTransport::open_with(path, options).await?;
        builder = builder.transport(Arc::new(transport));
    }
    Ok(builder.build().await?)
}

fn options() -> SubscribeOptions {
    SubscribeOptions::new().retry(RetryPolicy {
        immediate: 0,
        ..RetryPolicy::exponential(12, Duration::from_millis(100))
    })
}

/// A command handler: run `command` on aggregate `id`, in the flow of the message.
async fn run<A: Aggregate>(
    repo: &Repository<A>,
    id: &str,
    command: A::Command,
    ctx: &Context,
) -> Result<(), HandlerError> {
    repo.handle(id, &command, &Metadata::caused_by(ctx))
        .await
        .map_err(HandlerError::transient)?;
    Ok(())
}

/// How the payment gateway treats an order.
pub enum Gateway {
    /// It answers at once.
    Answers(GatewayAnswer),
    /// It captures the payment, but only after the saga stopped waiting (half the payment
    /// timeout later): the void the saga sent by then keeps the money from being taken, or
    /// gives it back.
    CapturesLate,
    /// It never answers.
    Silent,
}

/// How the payment gateway treats an order: a stable choice from the order's number, so
/// redeliveries get the same answer and the final check knows what to expect.
pub fn gateway(order_id: &str) -> Gateway {
    match order_number(order_id) % 20 {
        3 | 13 => Gateway::Answers(GatewayAnswer::Declined),
        7 => Gateway::Silent,
        17 => Gateway::CapturesLate,
        _ => Gateway::Answers(GatewayAnswer::Captured),
    }
}

/// The order's number: what follows the last `-` of its id.
pub fn order_number(order_id: &str) -> u64 {
    order_id
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Start the domain services: order, inventory, payment and shipping, each a bus with plain
/// async fn handlers on its aggregate.
pub async fn start_services(config: &Config, db: &Database) -> CliResult<Vec<Bus>> {
    let store = db.events();
    let orders = Repository::<Order>::new(store.clone());
    let reservations = Repository::<Reservation>::new(store.clone());
    let payments = Repository::<Payment>::new(store.clone());
    let shipments = Repository::<Shipment>::new(store);

    let order_bus = bus(config, "order-service").await?;
    let repo = orders.clone();
    order_bus.subscribe_with(
        move |c: CompleteOrder, ctx: Context| {
            let repo = repo.clone();
            async move { run(&repo, &c.order_id.clone(), OrderCommand::Complete(c), &ctx).await }
        },
        options(),
    )?;
    order_bus.subscribe_with(
        move |c: CancelOrder, ctx: Context| {
            let repo = orders.clone();
            async move { run(&repo, &c.order_id.clone(), OrderCommand::Cancel(c), &ctx).await }
        },
        options(),
    )?;

    let inventory_bus = bus(config, "inventory-service").await?;
    let repo = reservations.clone();
    inventory_bus.subscribe_with(
        move |c: ReserveInventory, ctx: Context| {
            let repo = repo.clone();
            async move {
                run(
                    &repo,
                    &c.order_id.clone(),
                    ReservationCommand::Reserve(c),
                    &ctx,
                )
                .await
            }
        },
        options(),
    )?;
    inventory_bus.subscribe_with(
        move |c: ReleaseInventory, ctx: Context| {
            let repo = reservations.clone();
            async move {
                run(
                    &repo,
                    &c.order_id.clone(),
                    ReservationCommand::Release(c),
                    &ctx,
                )
                .await
            }
        },
        options(),
    )?;

    let payment_bus = bus(config, "payment-service").await?;
    let repo = payments.clone();
    payment_bus.subscribe_with(
        move |c: ChargePayment, ctx: Context| {
            let repo = repo.clone();
            async move {
                let id = c.order_id.clone();
                match gateway(&id) {
                    Gateway::Answers(answer) => {
                        run(&repo, &id, PaymentCommand::Charge(c, answer), &ctx).await
                    }
                    // The saga's timeout deals with it.
                    Gateway::Silent => Ok(()),
                    Gateway::CapturesLate => {
                        let meta = Metadata::caused_by(&ctx);
                        tokio::spawn(async move {
                            tokio::time::sleep(payment_timeout() * 3 / 2).await;
                            let command = PaymentCommand::Charge(c, GatewayAnswer::Captured);
                            if let Err(e) = repo.handle(&id, &command, &meta).await {
                                tracing::warn!(order = %id, error = %e, "the late capture failed");
                            }
                        });
                        Ok(())
                    }
                }
            }
        },
        options(),
    )?;
    payment_bus.subscribe_with(
        move |c: VoidPayment, ctx: Context| {
            let repo = payments.clone();
            async move { run(&repo, &c.order_id.clone(), PaymentCommand::Void(c), &ctx).await }
        },
        options(),
    )?;

    let shipping_bus = bus(config, "shipping-service").await?;
    shipping_bus.subscribe_with(
        move |c: DispatchShipment, ctx: Context| {
            let repo = shipments.clone();
            async move { run(&repo, &c.order_id.clone(), c, &ctx).await }
        },
        options(),
    )?;

    let buses = vec![order_bus, inventory_bus, payment_bus, shipping_bus];
    for b in &buses {
        b.start().await?;
    }
    Ok(buses)
}

/// The workers: the fulfilment saga (messages and timeouts), the orders-by-status projection and
/// an outbox relay.
pub struct Workers {
    pub saga_bus: Bus,
    tasks: Vec<JoinHandle<()>>,
    cancel: CancellationToken,
}

impl Workers {
    /// Stop the loops and the saga's bus.
    pub async fn stop(self) -> CliResult<()> {
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        self.saga_bus.shutdown().await?;
        Ok(())
    }
}

/// Start the saga, the projection and a relay.
pub async fn start_workers(config: &Config, db: &Database) -> CliResult<Workers> {
    let cancel = CancellationToken::new();
    let mut tasks = Vec::new();
    let saga = Arc::new(SagaRunner::<Fulfilment>::new(db.sagas()));
    let saga_bus = bus(config, "order-fulfilment").await?;
    saga.subscribe(&saga_bus, options().concurrency(16))?;
    saga_bus.start().await?;
    {
        let (saga, cancel) = (saga.clone(), cancel.clone());
        tasks.push(tokio::spawn(async move { saga.run_timeouts(cancel).await }));
    }
    let projector: Arc<dyn herald_es::projection::Projector> = match db {
        Database::Postgres(s) => Arc::new(PgProjector::new(s, OrdersByStatus::new(db))),
        Database::Sqlite(s) => Arc::new(SqliteProjector::new(s, OrdersByStatus::new(db))),
    };
    let runner =
        ProjectionRunner::new(db.events(), projector).poll_interval(Duration::from_millis(50));
    {
        let cancel = cancel.clone();
        tasks.push(tokio::spawn(async move { runner.run(cancel).await }));
    }
    tasks.push(start_relay(config, db, cancel.clone()).await?);
    Ok(Workers {
        saga_bus,
        tasks,
        cancel,
    })
}

/// A relay publishing the store's outbox (the aggregates' events and the saga's commands).
pub async fn start_relay(
    config: &Config,
    db: &Database,
    cancel: CancellationToken,
) -> CliResult<JoinHandle<()>> {
    let publisher = bus(config, "orders-relay").await?;
    let relay_config = RelayConfig {
        // Events no service subscribes to (order.completed, ...) are for the store's readers.
        allow_unroutable: true,
        lease: Duration::from_secs(5),
        poll_interval: Duration::from_millis(50),
        ..RelayConfig::default()
    };
    Ok(match db {
        Database::Postgres(s) => {
            let store =
                herald_outbox::postgres::PgStore::connect(s.pool().conninfo(), s.outbox().clone())
                    .await?;
            let relay = Relay::new(Arc::new(store), publisher.publisher().clone(), relay_config);
            tokio::spawn(async move {
                relay.run(cancel).await;
                let _ = publisher.shutdown().await;
            })
        }
        Database::Sqlite(s) => {
            let store = herald_outbox::sqlite::SqliteStore::open(s.path(), s.outbox().clone())?;
            let relay = Relay::new(Arc::new(store), publisher.publisher().clone(), relay_config);
            tokio::spawn(async move {
                relay.run(cancel).await;
                let _ = publisher.shutdown().await;
            })
        }
    })
}
