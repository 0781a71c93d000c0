//! `amqps://` end to end: a throwaway CA and server certificate (openssl), a TLS-terminating
//! proxy in front of the local broker (tokio-rustls), and the transport connecting through it
//! with `cacertfile`. Needs the `rabbitmq-tls` feature and the `openssl` command.
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald::transport::{ConsumeOptions, PublishOptions};
use herald::{Envelope, QueueSpec, Topology, Transport};
use herald_rabbitmq::{RabbitConfig, RabbitTransport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

mod common;

fn openssl(dir: &Path, args: &[&str]) {
    let ok = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "openssl {args:?} failed (is openssl installed?)");
}

fn make_certs(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=herald-test-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

/// Accept TLS on a free local port and forward the plain stream to the broker.
async fn tls_proxy(dir: &Path) -> u16 {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                let Ok(mut broker) = tokio::net::TcpStream::connect("127.0.0.1:5672").await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_a_private_ca() {
    common::wait_for_broker(Duration::from_secs(60)).await;
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let port = tls_proxy(dir.path()).await;
    let ca = dir.path().join("ca.pem");

    // Without the CA the server certificate is not trusted.
    let mut untrusted = RabbitConfig::new(
        vec![format!("amqps://guest:guest@localhost:{port}/%2f")],
        "tls",
    );
    untrusted.outage_timeout = Duration::from_secs(2);
    assert!(
        RabbitTransport::connect(untrusted).await.is_err(),
        "an unknown CA must be refused"
    );

    let url = format!(
        "amqps://guest:guest@localhost:{port}/%2f?cacertfile={}",
        ca.display()
    );
    let t = RabbitTransport::connect(RabbitConfig::new(vec![url], "tls"))
        .await
        .expect("amqps connect");
    let id = uuid::Uuid::new_v4().simple().to_string();
    let exchange = format!("tls.{}", &id[..8]);
    let q = QueueSpec::new(format!("tls-{}.a", &id[..8]), "tls.#");
    let mut topo = Topology::new(&exchange);
    topo.add_queue(q.clone());
    t.apply_topology(&topo).await.unwrap();
    let e = Envelope::new(
        "tls.event",
        1,
        "tls.event",
        "tls",
        Bytes::from_static(b"{\"ok\":true}"),
    );
    t.publish(
        &exchange,
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
        .unwrap()
        .unwrap();
    assert_eq!(d.envelope.id, e.id);
    d.ack().await.unwrap();
    cancel.cancel();
    t.close().await.unwrap();
    common::delete_queue_set(&exchange, &q).await;
}
