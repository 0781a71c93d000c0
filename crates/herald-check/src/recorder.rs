//! A pipeline layer that records each successful handling into a [`History`].

use std::sync::Arc;

use herald::envelope::Envelope;
use herald::middleware::{BoxFuture, Handle, HandlerResult, Layer, Message};

use crate::History;

/// The ordering key the checker judges an event by: its subject (what Herald orders by where it
/// orders per key), else its routing key.
pub fn ordering_key(envelope: &Envelope) -> &str {
    envelope
        .subject
        .as_deref()
        .unwrap_or(envelope.routing_key.as_str())
}

/// Records every handling of one service that ends well: one record per successful attempt,
/// so a redelivered event shows as a duplicate. It runs inside the retry layer, so a failed
/// attempt records nothing. Made by [`History::recorder`].
///
/// ```
/// # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, herald::Event)]
/// # #[event(name = "order.placed", version = 1)]
/// # struct OrderPlaced { id: u64 }
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use herald::{Bus, SubscribeOptions};
/// use herald_check::History;
///
/// let history = History::new(["billing"]);
/// let bus = Bus::builder().broker("memory://recorder-doc").service("billing").build().await?;
/// bus.subscribe_with(
///     |_: OrderPlaced| async { Ok::<(), herald::HandlerError>(()) },
///     SubscribeOptions::new().layer(history.recorder("billing")),
/// )?;
/// bus.start().await?;
/// let sent = history.now();
/// let id = bus.publish(&OrderPlaced { id: 7 }).await?;
/// history.confirmed(&id, "order.placed", sent);
/// while history.handling_count() < 1 {
///     tokio::time::sleep(std::time::Duration::from_millis(5)).await;
/// }
/// assert_eq!(history.check().lost, 0);
/// bus.shutdown().await?;
/// # Ok::<(), herald::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct Recorder {
    history: History,
    service: Arc<str>,
}

impl Recorder {
    pub(crate) fn new(history: History, service: &str) -> Self {
        Recorder {
            history,
            service: service.into(),
        }
    }
}

impl Layer for Recorder {
    fn layer(&self, inner: Arc<dyn Handle>) -> Arc<dyn Handle> {
        Arc::new(Recording {
            inner,
            recorder: self.clone(),
        })
    }
}

struct Recording {
    inner: Arc<dyn Handle>,
    recorder: Recorder,
}

impl Handle for Recording {
    fn call(&self, msg: Message) -> BoxFuture<HandlerResult> {
        let handled = self.inner.call(msg.clone());
        let recorder = self.recorder.clone();
        Box::pin(async move {
            let result = handled.await;
            if result.is_ok() {
                let e = &msg.envelope;
                recorder
                    .history
                    .handled(&recorder.service, &e.id, ordering_key(e), e.attempt);
            }
            result
        })
    }
}
