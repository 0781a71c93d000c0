//! One exclusive lock per port, shared by every process on the machine (`flock` on a file), so
//! fixtures of concurrent test runs take turns instead of colliding on a port.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// Held for as long as it lives; the kernel releases it when the process dies, too.
pub(crate) struct PortLock {
    _file: File,
}

fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("herald-testkit-locks")
}

impl PortLock {
    /// Wait until the port's lock is ours.
    pub async fn acquire(port: u16) -> std::io::Result<PortLock> {
        let dir = lock_dir();
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{port}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        // A blocking flock on a thread of its own: the wait can be minutes.
        tokio::task::spawn_blocking(move || {
            // SAFETY: flock on a descriptor we own, with no memory passed.
            let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if r != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(PortLock { _file: file })
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_port_lock_is_exclusive_until_dropped() {
        let first = PortLock::acquire(65_001).await.unwrap();
        let second = tokio::spawn(PortLock::acquire(65_001));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!second.is_finished(), "the second waits for the first");
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("taken once released")
            .unwrap()
            .unwrap();
    }
}
