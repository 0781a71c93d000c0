//! Running the fault command on a schedule.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald_check::History;
use tokio::process::Command;

/// A shell command run every `every` (a run that takes longer delays the next, never overlaps
/// it), from `first_after` on, while publishing lasts.
#[derive(Debug, Clone)]
pub struct FaultSchedule {
    /// Run with `sh -c`.
    pub command: String,
    /// From one start to the next.
    pub every: Duration,
    /// Before the first.
    pub first_after: Duration,
    /// Stop after this many (none: while publishing lasts).
    pub limit: Option<u64>,
}

impl FaultSchedule {
    /// Run faults until publishing is done (`done`) or the limit is reached; each is recorded in
    /// `history`. Returns how many ran.
    pub async fn run(self, history: History, done: Arc<AtomicBool>) -> u64 {
        let mut next = tokio::time::Instant::now() + self.first_after;
        let mut count = 0;
        loop {
            // Wake now and then to notice the end of publishing.
            while tokio::time::Instant::now() < next {
                if done.load(Ordering::SeqCst) {
                    return count;
                }
                let left = next - tokio::time::Instant::now();
                tokio::time::sleep(left.min(Duration::from_millis(100))).await;
            }
            if done.load(Ordering::SeqCst) || self.limit.is_some_and(|l| count >= l) {
                return count;
            }
            count += 1;
            let started = history.now();
            let started_at = tokio::time::Instant::now();
            eprintln!("fault {count}: {}", self.command);
            // Its output goes to stderr: stdout is for the RESULT line.
            let output = Command::new("sh")
                .arg("-c")
                .arg(&self.command)
                .stdin(std::process::Stdio::null())
                .output()
                .await;
            let ok = matches!(&output, Ok(o) if o.status.success());
            match &output {
                Ok(o) => {
                    for line in String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .chain(String::from_utf8_lossy(&o.stderr).lines())
                    {
                        eprintln!("fault {count}:   {line}");
                    }
                    if !o.status.success() {
                        eprintln!("fault {count}: the command failed ({})", o.status);
                    }
                }
                Err(e) => eprintln!("fault {count}: could not run sh: {e}"),
            }
            history.fault(&self.command, started, ok);
            eprintln!(
                "fault {count}: done in {:.1}s",
                started_at.elapsed().as_secs_f64()
            );
            next = started_at + self.every;
        }
    }
}
