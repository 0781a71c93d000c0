//! Payload encryption for Herald: event bodies encrypted with AES-256-GCM (the RustCrypto
//! `aes-gcm` crate) between publisher and consumer, whatever the broker.
//!
//! [`EncryptingTransport`] wraps any transport: publishing encrypts each body with the
//! [`Keyring`]'s current key and names the key in a header; consuming decrypts with whichever
//! key the message names, so keys rotate without a flag day (add a new current key, keep the
//! old ones until their messages are gone). A delivery that cannot be decrypted goes to the
//! dead letters with the reason (kind `decrypt`). Routing keys and CloudEvents attributes stay
//! readable, so brokers route, and dashboards list, as before. The wire format, and how a
//! client in another language decrypts, are in `docs/wire-format.md` ("Encrypted bodies").
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::sync::Arc;
//! use herald_crypto::{EncryptingTransport, Keyring};
//!
//! // The keys as the application keeps them (an environment variable, a secret store):
//! // "2026-12=<64 hex digits>,2026-06=<64 hex digits>", the current key first.
//! let keys = Keyring::parse(&format!("2026-12={},2026-06={}", "ab".repeat(32), "cd".repeat(32)))?;
//! let inner = herald::transport::connect("memory://crypto-lib-doc", "billing").await?;
//! let transport = Arc::new(EncryptingTransport::new(inner, keys));
//! let bus = herald::Bus::builder().service("billing").transport(transport).build().await?;
//! # bus.shutdown().await?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
#![warn(missing_docs)]

mod envelope;
mod error;
mod keyring;
mod transport;

pub use envelope::{
    decrypt, encrypt, is_encrypted, ALGORITHM, ENCRYPTION_HEADER, KEY_ID_HEADER, NONCE_BYTES,
    TAG_BYTES,
};
pub use error::{Error, Result};
pub use keyring::{Key, Keyring};
pub use transport::{EncryptingTransport, DECRYPT_FAILURE};
