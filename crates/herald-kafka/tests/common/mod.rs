//! Helpers shared by the Kafka test targets.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use herald::Topology;
use herald_kafka::KafkaConfig;

/// The broker for a test binary: `HERALD_TEST_KAFKA` (`host:port`), else a Tansu of the
/// binary's own on `port` (9100-9199), started on first use in a new directory and killed
/// with the test process. Tests do not use the shared Tansu on 9092: Tansu 0.6.0 deletes every
/// topic on a DeleteTopics request, so nothing can be cleaned up there, and a fresh broker
/// keeps the tests' topics and `herald.queues` small. Registers the `kafka://` scheme too.
pub fn broker_on(port: u16) -> String {
    herald_kafka::register();
    if let Ok(b) = std::env::var("HERALD_TEST_KAFKA") {
        return b;
    }
    static OWN: std::sync::OnceLock<OwnTansu> = std::sync::OnceLock::new();
    OWN.get_or_init(|| OwnTansu::start_blocking(port)).addr()
}

/// A configuration for a transport on `broker`.
pub fn config(broker: &str, service: &str) -> KafkaConfig {
    KafkaConfig::new(vec![broker.to_string()], service)
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

/// Forget a topology's queues (their entries in `herald.queues`), so later publishers do not
/// count them as routes.
pub async fn forget_topology(broker: &str, topology: &Topology) {
    if let Ok(t) = herald_kafka::KafkaTransport::connect(config(broker, "cleanup")).await {
        let _ = t.forget_queues(topology).await;
        let _ = herald::Transport::close(&t).await;
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
        let db = t.dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || index_headers(&db))
            .await
            .expect("indexing Tansu's headers");
        t
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// [`start`](Self::start) from a thread without a runtime.
    pub fn start_blocking(port: u16) -> Self {
        let dir = tempfile::tempdir().expect("a directory for Tansu");
        let mut t = OwnTansu {
            port,
            dir,
            child: None,
        };
        t.spawn();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(t.addr()).is_err() {
            assert!(
                Instant::now() < deadline,
                "Tansu did not listen on {}",
                t.addr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        index_headers(t.dir.path());
        t
    }

    /// Start it (again) on the same directory and port, and wait until it listens.
    pub async fn restart(&mut self) {
        self.spawn();
        wait_for_broker(&self.addr(), Duration::from_secs(30)).await;
    }

    fn spawn(&mut self) {
        assert!(
            std::net::TcpStream::connect(self.addr()).is_err(),
            "something already listens on {}: a Tansu left by an interrupted run? stop it first",
            self.addr()
        );
        let (dir, listener) = (
            self.dir.path().to_path_buf(),
            format!("tcp://127.0.0.1:{}", self.port),
        );
        // The broker is killed when the thread that started it ends (PR_SET_PDEATHSIG follows
        // the thread), so a thread that lives as long as the test process starts it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(spawn_tansu(&dir, &listener));
            loop {
                std::thread::park();
            }
        });
        let child = rx.recv().expect("the starter thread answers");
        self.child = Some(child);
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

/// Give Tansu's SQLite `header` table the index its schema lacks (0.6.0 looks a record's headers
/// up by `(topition, offset_id)` with none, scanning every header stored for every record it
/// fetches); `scripts/services.sh` does the same for the shared broker. Waits (up to 30 s) for
/// the broker to create its tables.
fn index_headers(dir: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = rusqlite::Connection::open(dir.join("tansu.db")).and_then(|c| {
            c.busy_timeout(Duration::from_secs(10))?;
            c.execute_batch(
                "CREATE INDEX IF NOT EXISTS herald_header_record ON header (topition, offset_id)",
            )
        });
        match done {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("cannot index Tansu's headers: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Start `tansu broker` in `dir` listening on `listener`; it dies with the calling thread.
fn spawn_tansu(dir: &std::path::Path, listener: &str) -> std::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("tansu.log"))
        .expect("log file");
    let mut command = std::process::Command::new(tansu_binary());
    // SAFETY: prctl only sets this process's parent-death signal, async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    command
        .current_dir(dir)
        .env_remove("STORAGE_ENGINE")
        .env_remove("LISTENER_URL")
        .env_remove("ADVERTISED_LISTENER_URL")
        .args(["broker", "--storage-engine", "sqlite://tansu.db"])
        .args([
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
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
        })
}

impl Drop for OwnTansu {
    fn drop(&mut self) {
        self.kill();
    }
}
