//! Helpers shared by the Kafka test targets.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use herald::Topology;
use herald_kafka::KafkaConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

/// The broker for tests: `HERALD_TEST_KAFKA` (`host:port`) or the shared Tansu. Registers the
/// `kafka://` scheme too, so a bus built from a URL opens Kafka.
pub fn broker() -> String {
    herald_kafka::register();
    std::env::var("HERALD_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".to_string())
}

/// A configuration for tests on [`broker`], with short retry delays by default.
pub fn config(service: &str) -> KafkaConfig {
    KafkaConfig::new(vec![broker()], service)
}

/// Wait until something accepts connections on `addr` (up to `within`).
pub async fn wait_for_broker(addr: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            panic!("no Kafka broker listens on {addr}; run scripts/services.sh (it starts Tansu)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Forget a topology's queues: tombstones for their entries in the bindings topic, so
/// publishers stop counting them as routes. Topics are left in place: Tansu 0.6.0 deletes
/// every topic on a DeleteTopics request, and the broker is shared.
pub async fn forget_topology(addr: &str, topology: &Topology) {
    let Ok(producer) = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .create::<FutureProducer>()
    else {
        return;
    };
    for q in &topology.queues {
        let key = format!("{} {}", topology.exchange, q.name);
        let _ = producer
            .send(
                FutureRecord::<str, [u8]>::to("herald.bindings").key(&key),
                Duration::from_secs(5),
            )
            .await;
    }
}

/// A Tansu broker of a test's own, on its own port and directory, killed by pid.
pub struct OwnTansu {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

/// The Tansu binary: `TANSU` or `~/.cargo/bin/tansu` (what `scripts/services.sh` installs).
pub fn tansu_binary() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("TANSU") {
        return p.into();
    }
    let home = std::env::var("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo")
        });
    home.join("bin").join("tansu")
}

impl OwnTansu {
    /// Start one on `port` (9100-9199 are the Kafka fault tests') in a new directory.
    pub async fn start(port: u16) -> Self {
        let dir = tempfile::tempdir().expect("a directory for Tansu");
        let mut t = OwnTansu {
            port,
            dir,
            child: None,
        };
        t.restart().await;
        t
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Start it (again) on the same directory and port, and wait until it listens.
    pub async fn restart(&mut self) {
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        assert!(
            std::net::TcpStream::connect(self.addr()).is_err(),
            "something already listens on {}: a Tansu left by an interrupted run? stop it first",
            self.addr()
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .expect("log file");
        let mut command = std::process::Command::new(tansu_binary());
        // The broker dies with the test process, even when the test is killed.
        // SAFETY: prctl only sets this process's parent-death signal, async-signal-safe.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .current_dir(self.dir.path())
            .env_remove("STORAGE_ENGINE")
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .args(["broker", "--storage-engine", "sqlite://tansu.db"])
            .args([
                "--listener-url",
                &listener,
                "--advertised-listener-url",
                &listener,
            ])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}); run scripts/services.sh, which installs Tansu",
                    tansu_binary().display()
                )
            });
        self.child = Some(child);
        wait_for_broker(&self.addr(), Duration::from_secs(30)).await;
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// `kill -9` it, by pid, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnTansu {
    fn drop(&mut self) {
        self.kill();
    }
}
