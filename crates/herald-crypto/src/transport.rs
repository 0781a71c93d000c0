//! [`EncryptingTransport`]: any transport, with event bodies encrypted on the way to the broker
//! and decrypted on the way back.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_trait::async_trait;
use herald::transport::{
    Capabilities, ConsumeOptions, DeadLetter, DeadLetterAdmin, Deliveries, Delivery,
    DeliverySource, Failure, Outcome, PublishOptions, QueueStatistics, Settle, Settler,
};
use herald::{Envelope, QueueSpec, Result, Topology, Transport};
use tokio_util::sync::CancellationToken;

use crate::envelope::{
    decrypt, encrypt, is_encrypted, ALGORITHM, ENCRYPTION_HEADER, KEY_ID_HEADER,
};
use crate::keyring::Keyring;

/// The failure kind of a delivery that could not be decrypted (in its dead letter's
/// `herald_error_kind`).
pub const DECRYPT_FAILURE: &str = "decrypt";

/// A decorator that encrypts every body published through `inner` with the keyring's current
/// key, and decrypts every delivery before the consumer sees it. A delivery that cannot be
/// decrypted (a key this keyring lacks, a wrong key, an altered message, a plaintext body) is
/// never handed out: it goes to its queue's dead letters, kind `decrypt`, with the reason, and
/// can be replayed once the key is added. Retries and dead letters of decrypted deliveries are
/// stored encrypted, as they arrived; dead-letter listings are decrypted where the keyring can.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::sync::Arc;
/// use herald_crypto::{EncryptingTransport, Key, Keyring};
///
/// let keys = Keyring::new("2026-12", Key::generate())?;
/// let inner = herald::transport::connect("memory://crypto-doc", "billing").await?;
/// let bus = herald::Bus::builder()
///     .service("billing")
///     .transport(Arc::new(EncryptingTransport::new(inner, keys)))
///     .build()
///     .await?;
/// # bus.shutdown().await?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct EncryptingTransport {
    inner: Arc<dyn Transport>,
    keyring: Arc<Keyring>,
    accept_plaintext: bool,
}

impl EncryptingTransport {
    /// Wrap `inner`, encrypting with `keyring`.
    pub fn new(inner: Arc<dyn Transport>, keyring: Keyring) -> Self {
        EncryptingTransport {
            inner,
            keyring: Arc::new(keyring),
            accept_plaintext: false,
        }
    }

    /// Also hand out deliveries whose bodies are not encrypted, as they are (while publishers
    /// are being moved to encryption). By default they are dead-lettered: an unencrypted body
    /// on an encrypted bus is either a publisher that was missed or someone else's message.
    pub fn accept_plaintext(mut self) -> Self {
        self.accept_plaintext = true;
        self
    }

    /// The transport underneath.
    pub fn inner(&self) -> &Arc<dyn Transport> {
        &self.inner
    }

    /// The keyring.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }
}

#[async_trait]
impl Transport for EncryptingTransport {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn apply_topology(&self, topology: &Topology) -> Result<()> {
        self.inner.apply_topology(topology).await
    }

    async fn publish(
        &self,
        exchange: &str,
        batch: &[Envelope],
        options: PublishOptions,
    ) -> Result<()> {
        let sealed: Vec<Envelope> = batch
            .iter()
            .map(|e| {
                let mut e = e.clone();
                encrypt(&self.keyring, &mut e);
                e
            })
            .collect();
        self.inner.publish(exchange, &sealed, options).await
    }

    async fn consume(
        &self,
        queue: &QueueSpec,
        options: ConsumeOptions,
        cancel: CancellationToken,
    ) -> Result<Deliveries> {
        let inner = self.inner.consume(queue, options, cancel).await?;
        Ok(Deliveries::from_source(Decrypting {
            inner,
            keyring: self.keyring.clone(),
            queue: queue.name.clone(),
            accept_plaintext: self.accept_plaintext,
        }))
    }

    fn dead_letter_admin(&self) -> Option<&dyn DeadLetterAdmin> {
        self.inner
            .dead_letter_admin()
            .map(|_| self as &dyn DeadLetterAdmin)
    }

    fn queue_statistics(&self) -> Option<&dyn QueueStatistics> {
        self.inner.queue_statistics()
    }

    fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

/// Dead letters as the inner transport keeps them (encrypted), listed decrypted where the
/// keyring can; replay and purge act on the stored messages.
#[async_trait]
impl DeadLetterAdmin for EncryptingTransport {
    async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        let mut dead = herald::transport::dead_letter_admin(&*self.inner)?
            .dead_letters(queue, limit)
            .await?;
        for d in &mut dead {
            if is_encrypted(&d.envelope) {
                let mut plain = d.envelope.clone();
                if decrypt(&self.keyring, &mut plain).is_ok() {
                    d.envelope = plain;
                }
            }
        }
        Ok(dead)
    }

    async fn replay_dead_letters(&self, queue: &str, ids: Option<&[String]>) -> Result<u64> {
        herald::transport::dead_letter_admin(&*self.inner)?
            .replay_dead_letters(queue, ids)
            .await
    }

    async fn purge_dead_letters(&self, queue: &str, ids: Option<&[String]>) -> Result<u64> {
        herald::transport::dead_letter_admin(&*self.inner)?
            .purge_dead_letters(queue, ids)
            .await
    }
}

/// The inner transport's deliveries, decrypted as they are taken.
struct Decrypting {
    inner: Deliveries,
    keyring: Arc<Keyring>,
    queue: String,
    accept_plaintext: bool,
}

impl DeliverySource for Decrypting {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        loop {
            let delivery = match self.inner.poll_recv(cx) {
                Poll::Ready(Some(d)) => d,
                other => return other,
            };
            if !is_encrypted(&delivery.envelope) && self.accept_plaintext {
                return Poll::Ready(Some(delivery));
            }
            let redelivered = delivery.redelivered;
            let (mut envelope, settler) = delivery.into_parts();
            // What the message looked like, to store it that way again (a cheap `Bytes` clone).
            let sealed_body = envelope.body.clone();
            let key_id = envelope.headers.get(KEY_ID_HEADER).cloned();
            match decrypt(&self.keyring, &mut envelope) {
                Ok(()) => {
                    let seal = Sealed {
                        body: sealed_body,
                        key_id: key_id.unwrap_or_default(),
                    };
                    let settle = Arc::new(Resealing(Mutex::new(Some((settler, seal)))));
                    return Poll::Ready(Some(Delivery::new(envelope, redelivered, 0, settle)));
                }
                Err(e) => {
                    // Never handed out: dead-lettered as it arrived (`decrypt` changed nothing),
                    // with the reason.
                    let failure =
                        Failure::now(&envelope, &self.queue, DECRYPT_FAILURE, e.to_string());
                    tracing::warn!(
                        queue = %herald::transport::escape_controls(&self.queue),
                        id = %herald::transport::escape_controls(&envelope.id),
                        error = %e,
                        "cannot decrypt a delivery; dead-lettering it"
                    );
                    tokio::spawn(async move {
                        if let Err(e) = settler
                            .settle(&envelope, Outcome::DeadLetter(failure))
                            .await
                        {
                            tracing::warn!(error = %e, "cannot dead-letter an undecryptable delivery; the transport will deliver it again");
                        }
                    });
                }
            }
        }
    }

    fn close(&mut self) {
        self.inner.close();
    }
}

/// The encrypted form of a delivery that was decrypted: its body and key id.
struct Sealed {
    body: bytes::Bytes,
    key_id: String,
}

/// Settles one decrypted delivery. A retry, a release or a dead letter stores the message
/// again, so it gets the message as it arrived, encrypted; an ack stores nothing and gets the
/// decrypted envelope as it is (no copy). Dropped unsettled, it drops the inner settler, as
/// dropping the inner delivery would.
struct Resealing(Mutex<Option<(Settler, Sealed)>>);

#[async_trait]
impl Settle for Resealing {
    async fn settle(&self, _tag: u64, plain: &Envelope, outcome: Outcome) -> Result<()> {
        let taken = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some((settler, sealed)) = taken else {
            return Err(herald::Error::transport(
                "encryption",
                "this delivery was already settled",
            ));
        };
        if outcome == Outcome::Ack {
            return settler.settle(plain, outcome).await;
        }
        let mut stored = plain.clone();
        stored.body = sealed.body;
        stored
            .headers
            .insert(ENCRYPTION_HEADER.to_string(), ALGORITHM.to_string());
        stored
            .headers
            .insert(KEY_ID_HEADER.to_string(), sealed.key_id);
        settler.settle(&stored, outcome).await
    }
}
