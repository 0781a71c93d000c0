//! `herald demo --system orders` end to end on the embedded default, with the saga/projection
//! process (`--role workers`) killed with SIGKILL mid-run and started again: every order must
//! still finish as its payment says, nothing stuck, nothing lost, no event applied twice. Then
//! `herald sagas` and `herald projections` on the same store, and a rebuild of the read model.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct Process(Child);

impl Process {
    fn kill9(&mut self) {
        // SAFETY: signalling our own child process by its pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn herald(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_herald"));
    c.args(args)
        .current_dir(dir)
        .env_remove("HERALD_BROKER")
        .env_remove("HERALD_EXCHANGE")
        .env_remove("HERALD_ES_DATABASE");
    c
}

/// Past the time the workers are down (killed, restarted, their backlog taken up): a payment
/// answered while no saga ran is not overdue. With 1.5 s a loaded machine timed out orders whose
/// payment was waiting in the queue. Both roles get it: the driver's payment service answers
/// its late orders half of it after the saga stopped waiting.
const PAYMENT_TIMEOUT_MS: &str = "8000";

/// Start the workers and wait for their `READY`.
fn workers(dir: &Path) -> Process {
    let mut child = herald(
        dir,
        &[
            "demo",
            "--system",
            "orders",
            "--role",
            "workers",
            "--no-serve",
            "--payment-timeout-ms",
            PAYMENT_TIMEOUT_MS,
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .expect("start the workers");
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    match lines.next() {
        Some(Ok(l)) if l.trim() == "READY" => {}
        other => panic!("the workers said {other:?}, expected READY"),
    }
    Process(child)
}

fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

#[test]
fn orders_survive_a_killed_saga_and_projection_process() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = workers(dir.path());
    let mut driver = herald(
        dir.path(),
        &[
            "demo",
            "--system",
            "orders",
            "--role",
            "driver",
            "--events",
            "300",
            "--rate",
            "100",
            "--no-serve",
            "--payment-timeout-ms",
            PAYMENT_TIMEOUT_MS,
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("start the driver");
    // Follow the driver's progress lines on a thread.
    let (tx, rx) = mpsc::channel::<String>();
    let stderr = driver.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Kill the workers once some orders completed and others are under way.
    let started = Instant::now();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the driver reports progress");
        let done = ["completed", "finished"].iter().find_map(|word| {
            line.split(word)
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
        });
        if let Some(n) = done.filter(|n| *n >= 20) {
            assert!(n < 300, "the kill must come mid-run: {line}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "no progress: {line}"
        );
    }
    first.kill9();
    std::thread::sleep(Duration::from_millis(500));
    let _second = workers(dir.path());
    let out = driver.stdout.take().unwrap();
    let result = BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("RESULT "))
        .expect("a RESULT line");
    let status = driver.wait().unwrap();
    let log: Vec<String> = rx.try_iter().collect();
    assert!(status.success(), "{result}\n{}", log.join("\n"));
    assert_eq!(field(&result, "orders"), 300, "{result}");
    assert_eq!(field(&result, "stuck"), 0, "{result}");
    assert_eq!(field(&result, "lost"), 0, "{result}");
    assert_eq!(field(&result, "duplicates_applied"), 0, "{result}");
    // Orders 3 and 13 of every 20 are declined, 7 never answered and 17 answered after the
    // timeout (voided or refunded, never charged): 30, 30 and 240 of 300.
    assert_eq!(
        (
            field(&result, "completed"),
            field(&result, "compensated"),
            field(&result, "timed_out")
        ),
        (240, 30, 30),
        "{result}"
    );

    // The saga instances and the projection, from the CLI.
    let sagas = herald(dir.path(), &["sagas", "--limit", "1000"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&sagas.stdout);
    assert_eq!(text.matches("order-fulfilment").count(), 300, "{text}");
    assert!(!text.contains("STUCK"), "{text}");
    let stuck = herald(dir.path(), &["sagas", "--stuck"]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&stuck.stdout).trim(),
        "no stuck saga instances"
    );
    let list = herald(dir.path(), &["projections", "list"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("orders_by_status") && text.contains("behind        0 events"),
        "{text}"
    );

    // Rebuild the read model from zero while the workers run: it comes back the same.
    let before = read_model(dir.path());
    let rebuild = herald(
        dir.path(),
        &["projections", "rebuild", "orders_by_status", "--wait", "60"],
    )
    .output()
    .unwrap();
    assert!(
        rebuild.status.success(),
        "{}",
        String::from_utf8_lossy(&rebuild.stderr)
    );
    assert_eq!(read_model(dir.path()), before);
}

/// A 1 ms payment timeout: most payments answer after the saga's deadline, and whether the
/// timeout or the answer comes first depends on when the timeout poller runs. Each order ends
/// completed, compensated or timed out, none keeps money unless it completed (the check counts
/// such an order as lost), nothing is lost or stuck.
#[test]
fn late_payments_are_voided_or_refunded() {
    let dir = tempfile::tempdir().unwrap();
    let out = herald(
        dir.path(),
        &[
            "demo",
            "--system",
            "orders",
            "--events",
            "100",
            "--rate",
            "0",
            "--no-serve",
            "--payment-timeout-ms",
            "1",
        ],
    )
    .output()
    .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result = stdout
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success(), "{result}");
    for key in ["lost", "stuck", "duplicates_applied"] {
        assert_eq!(field(result, key), 0, "{key}: {result}");
    }
    let (completed, compensated, timed_out) = (
        field(result, "completed"),
        field(result, "compensated"),
        field(result, "timed_out"),
    );
    assert_eq!(completed + compensated + timed_out, 100, "{result}");
    // Order 7 of every 20 is never answered.
    assert!(timed_out >= 5, "{result}");
}

/// The read model's rows, and that each row applied as many events as its order has.
fn read_model(dir: &Path) -> Vec<(String, String, i64)> {
    let c = rusqlite::Connection::open(dir.join(".herald/orders.db")).unwrap();
    let stored: i64 = c
        .query_row("SELECT count(*) FROM es_events", [], |r| r.get(0))
        .unwrap();
    let applied: i64 = c
        .query_row(
            "SELECT sum(events_applied) FROM demo_orders_by_status",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(applied, stored, "every stored event applied exactly once");
    let mut st = c
        .prepare(
            "SELECT order_id, status, events_applied FROM demo_orders_by_status ORDER BY order_id",
        )
        .unwrap();
    let rows = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<Vec<_>>>()
        .unwrap();
    rows
}
