//! # herald-testkit
//!
//! Brokers of our own for fault tests (RabbitMQ, NATS with JetStream): a test must never stop,
//! restart or reconfigure the machine's shared broker, so it starts its own nodes (own names,
//! ports, data, logs, config, Erlang cookie), kills them with `kill -9` by pid, restarts them,
//! and removes them when done.
//! A [`Cluster`] wraps `scripts/cluster.sh`, the same script people run by hand, so the two
//! never drift apart:
//!
//! ```no_run
//! # async fn example() -> Result<(), herald_testkit::TestkitError> {
//! use herald_testkit::Cluster;
//!
//! let cluster = Cluster::rabbitmq(5686, 3).await?;   // nodes on 5686, 5687, 5688
//!                                                     // (Cluster::nats(14240, 3) for NATS)
//! let url = cluster.url();                             // amqp://...:5686/%2f,amqp://...:5687/%2f,...
//! if let Some(node) = cluster.leader("orders.placed").await? {
//!     cluster.kill(node).await?;                       // kill -9 the queue leader's node
//!     cluster.start(node).await?;                      // it rejoins from its data
//! }
//! # Ok(()) }                                          // dropping the cluster removes it
//! ```
//!
//! Ports: a fixture holds an exclusive lock per port (`/tmp/herald-testkit-locks/<port>.lock`)
//! for its lifetime, so tests of other processes or worktrees that want the same ports wait
//! instead of colliding; locks are taken in ascending port order, and a node left behind by a
//! crashed test on a port is removed before that port is used again.
#![warn(missing_docs)]

mod lock;

use std::path::{Path, PathBuf};
use std::process::Output;

use tokio::process::Command;

use self::lock::PortLock;

/// What went wrong with a broker of our own.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// `scripts/cluster.sh` failed.
    #[error("scripts/cluster.sh {command} failed ({status}): {stderr}")]
    Script {
        /// The subcommand.
        command: String,
        /// Its exit status.
        status: String,
        /// What it said.
        stderr: String,
    },
    /// The script could not be run at all, or a port lock could not be taken.
    #[error("{0}; is bash installed and scripts/cluster.sh executable?")]
    Io(#[from] std::io::Error),
}

/// Which broker a cluster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    /// RabbitMQ (`rabbitmq-server`), `amqp://` URLs. Node N listens on `first_port + N - 1`,
    /// its Erlang distribution on that + 20000.
    RabbitMq,
    /// NATS with JetStream (`nats-server`), `nats://` URLs. Node N listens on
    /// `first_port + N - 1`, routes on that + 10, monitoring on that + 20.
    Nats,
}

impl Broker {
    fn name(self) -> &'static str {
        match self {
            Broker::RabbitMq => "rabbitmq",
            Broker::Nats => "nats",
        }
    }

    /// Every port node `node` of a cluster starting at `first_port` uses, so that a fixture
    /// locks them all.
    fn ports(self, first_port: u16, node: usize) -> Vec<u16> {
        let client = first_port + (node - 1) as u16;
        match self {
            // The distribution port (+20000) is no one else's: the ha range owns both.
            Broker::RabbitMq => vec![client],
            Broker::Nats => vec![client, client + 10, client + 20],
        }
    }
}

/// Nodes of our own (one, or a cluster), removed when dropped.
pub struct Cluster {
    broker: Broker,
    first_port: u16,
    nodes: usize,
    dir: PathBuf,
    urls: Vec<String>,
    _locks: Vec<PortLock>,
}

/// `scripts/cluster.sh` of this repository.
pub fn cluster_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/cluster.sh")
}

impl Cluster {
    /// Start `nodes` RabbitMQ nodes on ports `first_port..first_port + nodes` (Erlang
    /// distribution on those + 20000), joined into one cluster, and wait until each accepts
    /// connections. Waits first for other fixtures holding these ports.
    pub async fn rabbitmq(first_port: u16, nodes: usize) -> Result<Cluster, TestkitError> {
        Self::start_new(Broker::RabbitMq, first_port, nodes).await
    }

    /// Start `nodes` NATS servers with JetStream on ports `first_port..first_port + nodes`
    /// (routes on those + 10, monitoring on those + 20; at most 10 nodes), routed into one
    /// cluster, and wait until JetStream is healthy on each. Streams of the cluster can be
    /// replicated up to `nodes` times.
    pub async fn nats(first_port: u16, nodes: usize) -> Result<Cluster, TestkitError> {
        Self::start_new(Broker::Nats, first_port, nodes).await
    }

    async fn start_new(
        broker: Broker,
        first_port: u16,
        nodes: usize,
    ) -> Result<Cluster, TestkitError> {
        let mut ports: Vec<u16> = (1..=nodes)
            .flat_map(|n| broker.ports(first_port, n))
            .collect();
        // Always in ascending order, so two fixtures never wait for each other's locks.
        ports.sort_unstable();
        let mut locks = Vec::new();
        for port in ports {
            locks.push(PortLock::acquire(port).await?);
        }
        let mut cluster = Cluster {
            broker,
            first_port,
            nodes,
            dir: std::env::temp_dir()
                .join(format!("herald-testkit-{}-{first_port}", broker.name())),
            urls: Vec::new(),
            _locks: locks,
        };
        // Whatever a crashed run left on these ports goes first: we hold their locks now.
        cluster.script(&["down"]).await?;
        let out = cluster.script(&["up"]).await?;
        let last = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .to_string();
        cluster.urls = last.split(',').map(str::to_string).collect();
        Ok(cluster)
    }

    /// Which broker this is.
    pub fn broker(&self) -> Broker {
        self.broker
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.nodes
    }

    /// Never true: a cluster has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes == 0
    }

    /// Every node's URL, comma-separated: the broker URL Herald takes for a cluster.
    pub fn url(&self) -> String {
        self.urls.join(",")
    }

    /// Node `node`'s URL (1-based).
    pub fn node_url(&self, node: usize) -> &str {
        &self.urls[node - 1]
    }

    /// Node `node`'s client port.
    pub fn port(&self, node: usize) -> u16 {
        self.first_port + (node - 1) as u16
    }

    /// `kill -9` node `node` by its pid.
    pub async fn kill(&self, node: usize) -> Result<(), TestkitError> {
        self.script(&["kill", &node.to_string()]).await.map(drop)
    }

    /// Start node `node` again and wait until it accepts connections.
    pub async fn start(&self, node: usize) -> Result<(), TestkitError> {
        self.script(&["start", &node.to_string()]).await.map(drop)
    }

    /// `kill -9` every node, then start them all again and wait for each.
    pub async fn restart_all(&self) -> Result<(), TestkitError> {
        self.script(&["restart-all"]).await.map(drop)
    }

    /// The node leading RabbitMQ quorum queue, or JetStream stream, `queue` now, if the cluster
    /// knows one.
    pub async fn leader(&self, queue: &str) -> Result<Option<usize>, TestkitError> {
        match self.script(&["leader", queue]).await {
            Ok(out) => Ok(String::from_utf8_lossy(&out.stdout).trim().parse().ok()),
            Err(TestkitError::Script { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Run `rabbitmqctl` against node `node` (with the cluster's own cookie), e.g.
    /// `["close_all_connections", "test"]` or `["set_vm_memory_high_watermark", "0.4"]`.
    /// RabbitMQ only.
    pub async fn ctl(&self, node: usize, args: &[&str]) -> Result<Output, TestkitError> {
        let mut all = vec!["ctl".to_string(), node.to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        self.script(&refs).await
    }

    /// A shell command line that runs `scripts/cluster.sh <args>` against this cluster, e.g. a
    /// `--fault-cmd` for `herald chaos`: `cluster.shell_command("kill-random")`.
    pub fn shell_command(&self, args: &str) -> String {
        format!(
            "HERALD_CLUSTER_BROKER={} HERALD_CLUSTER_PORT={} HERALD_CLUSTER_NODES={} HERALD_CLUSTER_DIR='{}' bash '{}' {args}",
            self.broker.name(),
            self.first_port,
            self.nodes,
            self.dir.display(),
            cluster_script().display()
        )
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new("bash");
        c.arg(cluster_script())
            .args(args)
            .env("HERALD_CLUSTER_BROKER", self.broker.name())
            .env("HERALD_CLUSTER_PORT", self.first_port.to_string())
            .env("HERALD_CLUSTER_NODES", self.nodes.to_string())
            .env("HERALD_CLUSTER_DIR", &self.dir)
            .stdin(std::process::Stdio::null());
        c
    }

    async fn script(&self, args: &[&str]) -> Result<Output, TestkitError> {
        let out = Command::from(self.command(args)).output().await?;
        if !out.status.success() {
            return Err(TestkitError::Script {
                command: args.join(" "),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(out)
    }
}

/// Whether the installed RabbitMQ (`rabbitmqctl version`, the same release as the nodes the
/// fault tests start) hands a quorum queue's missing deliveries back in order after a leader
/// change. Before 4.2 the new leader resent the messages a consumer had not received in reverse
/// (rabbitmq-server#14386, fixed by #16008 in 4.2.x), so events lost in flight during a leader
/// failover could be handled after later ones of their key.
pub fn rabbitmq_failover_keeps_order() -> bool {
    let out = std::process::Command::new("rabbitmqctl")
        .arg("version")
        .output()
        .ok()
        .filter(|o| o.status.success());
    let version = out
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (4, 2)
}

/// The reorderings `faults` RabbitMQ leader failovers may cause, for a consumer with `prefetch`
/// unsettled messages: none where [`rabbitmq_failover_keeps_order`], else at most its window
/// per fault.
pub fn rabbitmq_failover_reorder_bound(faults: usize, prefetch: usize) -> u64 {
    if rabbitmq_failover_keeps_order() {
        0
    } else {
        (faults * prefetch) as u64
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Synchronous: drop runs outside async code too (a panicking test). Bounded by the
        // script's own kill loop.
        let _ = self.command(&["down"]).output();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A NATS cluster of our own: three JetStream servers routed together, a node killed and
    /// started again. (The RabbitMQ fixture is exercised by herald-rabbitmq's fault tests.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_nats_cluster_comes_up_and_a_killed_node_comes_back() {
        // In the ha NATS range (14240-14269), clear of a cluster started by hand (14240-14262).
        let cluster = Cluster::nats(14243, 3).await.expect("own NATS cluster");
        assert_eq!(
            cluster.url(),
            "nats://127.0.0.1:14243,nats://127.0.0.1:14244,nats://127.0.0.1:14245"
        );
        let connect = |port: u16| std::net::TcpStream::connect(("127.0.0.1", port));
        assert!(connect(cluster.port(2)).is_ok());
        cluster.kill(2).await.expect("kill -9");
        assert!(connect(cluster.port(2)).is_err(), "node 2 is down");
        assert!(connect(cluster.port(1)).is_ok(), "the others stay up");
        cluster.start(2).await.expect("start again");
        assert!(connect(cluster.port(2)).is_ok());
        assert!(
            cluster.ctl(1, &["status"]).await.is_err(),
            "ctl is RabbitMQ's"
        );
        let dir = cluster.dir.clone();
        drop(cluster);
        assert!(!dir.exists(), "dropping the cluster removes it");
        assert!(connect(14243).is_err(), "and its nodes");
    }
}
