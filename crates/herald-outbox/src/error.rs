//! The crate's one error type.

use std::time::Duration;

/// Everything that can go wrong in the outbox, the relay and the inbox. Each message says what to
/// do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A PostgreSQL statement or connection failed.
    #[cfg(feature = "postgres")]
    #[error("PostgreSQL error while {context}: {source}; check that the database is reachable and that the outbox migration ran (`PgOutbox::migrate`)")]
    Postgres {
        /// What Herald was doing.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A SQLite statement failed.
    #[cfg(feature = "sqlite")]
    #[error("SQLite error while {context}: {source}; check the database file's path and permissions and that the outbox migration ran")]
    Sqlite {
        /// What Herald was doing.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: rusqlite::Error,
    },
    /// A Redis command failed.
    #[cfg(feature = "redis")]
    #[error("Redis error while {context}: {source}; check that Redis is reachable at the configured URL")]
    Redis {
        /// What Herald was doing.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: redis::RedisError,
    },
    /// Publishing through Herald failed.
    #[error("publishing failed: {0}")]
    Herald(#[from] herald::Error),
    /// An event could not be encoded, or a stored row could not be decoded.
    #[error("invalid outbox data: {0}")]
    Data(String),
    /// A name (schema, table, column, consumer) that would be spliced into SQL is not a plain
    /// identifier.
    #[error("`{0}` is not a valid SQL identifier: use letters, digits and `_`, starting with a letter or `_`, at most 48 characters")]
    Identifier(String),
    /// A database call did not finish in time.
    #[error("timed out after {0:?}; the database may be overloaded or a lock is held elsewhere")]
    Timeout(Duration),
    /// A blocking task panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(feature = "postgres")]
pub(crate) fn pg(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
    move |source| Error::Postgres { context, source }
}

#[cfg(feature = "sqlite")]
pub(crate) fn sql(context: &'static str) -> impl FnOnce(rusqlite::Error) -> Error {
    move |source| Error::Sqlite { context, source }
}

/// Check that `name` can be spliced into SQL as an identifier.
pub(crate) fn ident(name: &str) -> Result<&str> {
    let mut chars = name.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 48;
    if ok {
        Ok(name)
    } else {
        Err(Error::Identifier(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn identifiers_are_checked() {
        assert!(super::ident("herald_outbox").is_ok());
        assert!(super::ident("_x1").is_ok());
        assert!(super::ident("1x").is_err());
        assert!(super::ident("a;drop table x").is_err());
        assert!(super::ident("").is_err());
    }
}
