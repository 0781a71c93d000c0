//! The child process of `tests/sqlite_processes.rs` (not a test itself): opens the SQLite file
//! named by `HERALD_SQLITE_DB` and plays the role named by `HERALD_SQLITE_CHILD`, printing one
//! line per step for the parent to read.

#[path = "sqlite_shared.rs"]
mod shared;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use herald::transport::{ConsumeOptions, PublishOptions};
use herald::{Envelope, Transport};
use shared::{msg, n_of, open, queue, DB, EXCHANGE, ROLE};
use tokio_util::sync::CancellationToken;

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[tokio::main]
async fn main() {
    let role = std::env::var(ROLE).expect("HERALD_SQLITE_CHILD names the child's role");
    let path = PathBuf::from(std::env::var(DB).expect("HERALD_SQLITE_DB"));
    let t = open(&path).await;
    match role.as_str() {
        // Publish 500 messages in batches of 1..=7, then exit.
        "publish" => {
            let mut n = 0u64;
            let mut size = 1;
            while n < 500 {
                let batch: Vec<Envelope> = (n..(n + size).min(500)).map(msg).collect();
                n += batch.len() as u64;
                t.publish(EXCHANGE, &batch, PublishOptions::default())
                    .await
                    .expect("publish");
                size = size % 7 + 1;
            }
            t.close().await.expect("close");
            say("FINISHED".into());
        }
        // Publish forever from 8 concurrent tasks, printing each number once publish returned.
        "publish_forever" => {
            let t = Arc::new(t);
            let mut tasks = Vec::new();
            for task in 0..8u64 {
                let t = t.clone();
                tasks.push(tokio::spawn(async move {
                    for i in 0.. {
                        let n = i * 8 + task;
                        t.publish(EXCHANGE, &[msg(n)], PublishOptions::default())
                            .await
                            .expect("publish");
                        say(format!("PUBLISHED {n}"));
                    }
                }));
            }
            for task in tasks {
                let _ = task.await;
            }
        }
        // Take everything and never settle; wait to be killed.
        "consume_no_ack" => {
            let cancel = CancellationToken::new();
            let mut rx = t
                .consume(&queue(), ConsumeOptions { prefetch: 100 }, cancel)
                .await
                .expect("consume");
            let mut held = Vec::new();
            while let Some(d) = rx.recv().await {
                say(format!("GOT {}", n_of(&d.envelope)));
                held.push(d);
            }
        }
        other => panic!("unknown child role {other}"),
    }
}
