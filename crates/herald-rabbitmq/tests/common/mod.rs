//! Helpers shared by the RabbitMQ test targets.
#![allow(dead_code)]

use std::time::{Duration, Instant};

pub mod workload;

/// The broker URL for tests: `HERALD_TEST_AMQP_URL` or the local default. Registers the
/// `amqp://` scheme too, so a bus built from the URL opens RabbitMQ.
pub fn amqp_url() -> String {
    herald_rabbitmq::register();
    std::env::var("HERALD_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

/// Wait until something accepts connections on the broker's port (up to `within`).
pub async fn wait_for_broker(within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if tokio::net::TcpStream::connect("127.0.0.1:5672")
            .await
            .is_ok()
        {
            return;
        }
        if Instant::now() > deadline {
            panic!("RabbitMQ is not listening on 127.0.0.1:5672; start it (rabbitmqctl start_app / service rabbitmq-server start)");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Run `rabbitmqctl` with arguments, returning whether it succeeded.
pub fn rabbitmqctl(args: &[&str]) -> bool {
    std::process::Command::new("rabbitmqctl")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Delete a work queue, the dead-letter and retry queues Herald declared around it, and the
/// exchange (with its `.dlx`), over one plain AMQP connection.
pub async fn delete_queue_set(exchange: &str, queue: &herald::QueueSpec) {
    use amqprs::channel::{ExchangeDeleteArguments, QueueDeleteArguments};
    let cfg = herald_rabbitmq::RabbitConfig::new(vec![], "cleanup");
    let mut names = vec![queue.name.clone(), queue.dead_letter_queue()];
    let levels = if queue.retry_delays.is_empty() {
        cfg.default_retry_delays.clone()
    } else {
        queue.retry_delays.clone()
    };
    for d in levels {
        names.push(queue.retry_queue(d));
    }
    let args =
        amqprs::connection::OpenConnectionArguments::new("127.0.0.1", 5672, "guest", "guest");
    let Ok(conn) = amqprs::connection::Connection::open(&args).await else {
        return;
    };
    if let Ok(ch) = conn.open_channel(None).await {
        for q in names {
            let _ = ch.queue_delete(QueueDeleteArguments::new(&q)).await;
        }
        for x in [exchange.to_string(), format!("{exchange}.dlx")] {
            let _ = ch.exchange_delete(ExchangeDeleteArguments::new(&x)).await;
        }
        let _ = ch.close().await;
    }
    let _ = conn.close().await;
}

/// The reorderings a leader failover may cause (see
/// [`herald_testkit::rabbitmq_failover_keeps_order`]): at most the consumer's prefetch window
/// per fault on a broker before 4.2.
pub fn failover_reorder_bound(faults: usize) -> u64 {
    herald_testkit::rabbitmq_failover_reorder_bound(faults, herald::Config::default().prefetch)
}
