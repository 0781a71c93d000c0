//! The crate's errors: keys that cannot be used, and messages that cannot be decrypted.

/// What went wrong with a key or a message. Each message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key that is not 32 bytes of hexadecimal, or a keyring spec that does not parse.
    #[error("invalid encryption key: {reason}")]
    InvalidKey {
        /// Why.
        reason: String,
    },
    /// A key id that cannot travel in a header.
    #[error("invalid key id `{id}`: use 1 to 64 letters, digits, `-`, `_` or `.`")]
    InvalidKeyId {
        /// The id.
        id: String,
    },
    /// The same key id twice in one keyring.
    #[error("key id `{id}` is in the keyring twice; give each key its own id")]
    DuplicateKeyId {
        /// The id.
        id: String,
    },
    /// A message that cannot be decrypted; the reason is what its dead letter records.
    #[error("{0}")]
    Decrypt(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
