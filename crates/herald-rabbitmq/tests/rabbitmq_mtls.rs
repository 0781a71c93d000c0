//! Mutual TLS against RabbitMQ's own TLS listener: the test starts a RabbitMQ node of its own
//! (node `herald-mtls@localhost`, AMQP on 5690, TLS on 5691, distribution on 25690, its own
//! config, data and log directories) whose listener demands a client certificate signed by the
//! test's CA (`verify_peer`, `fail_if_no_peer_cert`). The transport connects with a client
//! certificate (`amqps://...?cacertfile=&certfile=&keyfile=`); a client that does not trust the
//! server's CA, one without a certificate, and one whose certificate another CA signed all fail
//! with an error that says so. The node is killed by its pid at the end. Needs the `tls`
//! feature, `openssl` and the `rabbitmq-server` package (scripts/services.sh installs both).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald::transport::{ConsumeOptions, PublishOptions};
use herald::{Envelope, QueueSpec, Topology, Transport};
use herald_rabbitmq::{RabbitConfig, RabbitTransport};
use tokio_util::sync::CancellationToken;

/// Ports of the security helper's range: AMQP, TLS, and distribution (AMQP + 20000).
const AMQP_PORT: u16 = 5690;
const TLS_PORT: u16 = 5691;
const DIST_PORT: u16 = AMQP_PORT + 20000;
const NODE: &str = "herald-mtls@localhost";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs (scripts/services.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA `name` (`name.pem`, `name.key`).
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-subj",
            &format!("/CN=herald-test-{name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    );
}

/// A certificate `name` signed by `ca`, for a server (`localhost`) or a client.
fn make_cert(dir: &Path, ca: &str, name: &str, server: bool) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={}", if server { "localhost" } else { name }),
        ],
    );
    let ext = if server {
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    } else {
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n"
    };
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

/// The `rabbitmq` system user's ids: the node runs as it, like the packaged one.
fn rabbitmq_user() -> (u32, u32, PathBuf) {
    let name = std::ffi::CString::new("rabbitmq").unwrap();
    // SAFETY: getpwnam returns a pointer to static storage or null; read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "no `rabbitmq` user: install rabbitmq-server (scripts/services.sh)"
    );
    // SAFETY: checked non-null above.
    let pw = unsafe { &*pw };
    // SAFETY: pw_dir is a NUL-terminated string in the same static storage.
    let home = unsafe { std::ffi::CStr::from_ptr(pw.pw_dir) };
    (
        pw.pw_uid,
        pw.pw_gid,
        PathBuf::from(home.to_string_lossy().into_owned()),
    )
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), uid, gid);
        }
    }
}

/// The test's own RabbitMQ node. Killed (SIGKILL, by pid) when dropped, even when the test
/// fails; its directories go with the temporary directory.
struct Node {
    child: Child,
    dir: PathBuf,
}

impl Node {
    fn start(dir: &Path) -> Node {
        let (uid, gid, home) = rabbitmq_user();
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let cert = |f: &str| dir.join(f).display().to_string();
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.local = 127.0.0.1:{AMQP_PORT}\n\
                 listeners.ssl.default = 127.0.0.1:{TLS_PORT}\n\
                 ssl_options.cacertfile = {}\n\
                 ssl_options.certfile = {}\n\
                 ssl_options.keyfile = {}\n\
                 ssl_options.verify = verify_peer\n\
                 ssl_options.fail_if_no_peer_cert = true\n",
                cert("ca.pem"),
                cert("server.pem"),
                cert("server.key"),
            ),
        )
        .unwrap();
        // No plugins (the shared node's management listener would collide), no shared env file.
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        std::fs::write(dir.join("rabbitmq-env.conf"), "").unwrap();
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        chown_tree(dir, uid, gid);
        let log = std::fs::File::create(dir.join("log").join("console.log")).unwrap();
        let child = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server")
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("HOME", &home)
            .env("LANG", "C.UTF-8")
            // Run the VM in this process (no signal-forwarding shell): the child's pid is the
            // node's, and killing it ends the node.
            .env("RUNNING_UNDER_SYSTEMD", "true")
            .env("RABBITMQ_NODENAME", NODE)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", AMQP_PORT.to_string())
            .env("RABBITMQ_DIST_PORT", DIST_PORT.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PID_FILE", dir.join("node.pid"))
            .current_dir(dir)
            .uid(uid)
            .gid(gid)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("rabbitmq-server starts");
        Node {
            child,
            dir: dir.to_path_buf(),
        }
    }

    fn logs(&self) -> String {
        let mut text = String::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.join("log")) {
            for e in entries.flatten() {
                text.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        text
    }

    /// Wait until the TLS listener accepts connections.
    async fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the test's RabbitMQ node exited ({status}): {}",
                    self.logs()
                );
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", TLS_PORT))
                .await
                .is_ok()
            {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "the test's RabbitMQ node did not open its TLS listener: {}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: signalling the node this test started, by its pid.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

fn amqps(dir: &Path, ca: &str, client: Option<&str>) -> RabbitConfig {
    let mut url = format!(
        "amqps://guest:guest@localhost:{TLS_PORT}/%2f?cacertfile={}",
        dir.join(format!("{ca}.pem")).display()
    );
    if let Some(c) = client {
        url.push_str(&format!(
            "&certfile={}&keyfile={}",
            dir.join(format!("{c}.pem")).display(),
            dir.join(format!("{c}.key")).display()
        ));
    }
    let mut cfg = RabbitConfig::from_url(&url, "mtls").unwrap();
    cfg.outage_timeout = Duration::from_secs(3);
    cfg
}

async fn refused(cfg: RabbitConfig) -> String {
    match RabbitTransport::connect(cfg).await {
        Ok(_) => panic!("the connection was accepted"),
        Err(e) => {
            println!("refused: {e}");
            e.to_string()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_the_brokers_own_listener() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_ca(dir, "ca");
    make_cert(dir, "ca", "server", true);
    make_cert(dir, "ca", "client", false);
    make_ca(dir, "other-ca");
    make_cert(dir, "other-ca", "stranger", false);
    let mut node = Node::start(dir);
    node.wait_ready().await;

    // A client certificate the broker's CA signed, and the CA to check the broker with.
    let t = RabbitTransport::connect(amqps(dir, "ca", Some("client")))
        .await
        .unwrap_or_else(|e| panic!("mutual TLS: {e}\n{}", node.logs()));
    let mut topo = Topology::new("mtls.x");
    let q = QueueSpec::new("mtls.q", "mtls.#");
    topo.add_queue(q.clone());
    t.apply_topology(&topo).await.unwrap();
    let e = Envelope::new(
        "mtls.event",
        1,
        "mtls.event",
        "mtls",
        Bytes::from_static(b"{\"ok\":1}"),
    );
    t.publish(
        "mtls.x",
        std::slice::from_ref(&e),
        PublishOptions::default(),
    )
    .await
    .unwrap();
    let cancel = CancellationToken::new();
    let mut rx = t
        .consume(&q, ConsumeOptions::default(), cancel.clone())
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a delivery over mutual TLS")
        .unwrap();
    assert_eq!(d.envelope.id, e.id);
    d.ack().await.unwrap();
    cancel.cancel();
    t.close().await.unwrap();

    // The client does not trust the broker's certificate.
    let e = refused(amqps(dir, "other-ca", Some("client"))).await;
    assert!(
        e.contains("UnknownIssuer") && e.contains("not signed by a CA this client trusts"),
        "wrong CA: {e}"
    );
    // No client certificate: the broker ends the handshake.
    let e = refused(amqps(dir, "ca", None)).await;
    assert!(
        e.contains("requires a client certificate; add certfile= and keyfile="),
        "missing client certificate: {e}"
    );
    // A client certificate from a CA the broker does not trust.
    let e = refused(amqps(dir, "ca", Some("stranger"))).await;
    assert!(
        e.contains("certificate"),
        "untrusted client certificate: {e}"
    );
    drop(node);
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", TLS_PORT))
            .await
            .is_err(),
        "the node is gone"
    );
}
