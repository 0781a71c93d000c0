//! Publishing for a checked run: one event until the broker confirms it, the same id each time.

use std::time::{Duration, Instant};

use herald::{Envelope, Publisher};

use crate::History;

/// Publish `envelope` until the broker confirms it, recording the outcome in `history` under
/// ordering key `key`: each failed attempt as unconfirmed (the broker may hold a copy: judged
/// neither lost nor unexpected), the success as confirmed, timed from the first attempt. The
/// same id every time, so a copy the broker kept from a failed attempt shows as a duplicate,
/// never as an event of its own. Gives up with the last error after `give_up_after`.
///
/// Publish a key's events one after another with this (each once the previous one returned)
/// and the checker can judge their order.
pub async fn publish_until_confirmed(
    history: &History,
    publisher: &Publisher,
    envelope: Envelope,
    key: &str,
    give_up_after: Duration,
) -> herald::Result<()> {
    let sent = history.now();
    let deadline = Instant::now() + give_up_after;
    loop {
        match publisher
            .publish_envelopes(vec![envelope.clone()], false)
            .await
        {
            Ok(()) => {
                history.confirmed(&envelope.id, key, sent);
                return Ok(());
            }
            Err(e) => {
                history.unconfirmed(&envelope.id, key, sent);
                if Instant::now() >= deadline {
                    return Err(e);
                }
                tracing::info!(%key, error = %e, "publish failed; publishing it again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
