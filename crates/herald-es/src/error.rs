//! The crate's one error type, and the error a command returns.

use crate::store::ExpectedVersion;

/// A boxed error from user code (a projection's SQL, a saga's encoding).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Everything that can go wrong in the event store, projections and sagas. Each message says
/// what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An append found the stream at another version than it expected (optimistic concurrency).
    #[error("stream `{stream}` is at version {actual}, the append expected {expected}; load it again and retry the command (`Repository::handle` retries by itself)")]
    Conflict {
        /// The stream.
        stream: String,
        /// What the append expected.
        expected: ExpectedVersion,
        /// The stream's version when the append ran.
        actual: u64,
    },
    /// A PostgreSQL statement or connection failed.
    #[cfg(feature = "postgres")]
    #[error("PostgreSQL error while {context}: {source}; check that the database is reachable and that the store's migration ran (`PgEventStore::migrate`)")]
    Postgres {
        /// What Herald was doing.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A SQLite statement failed.
    #[cfg(feature = "sqlite")]
    #[error("SQLite error while {context}: {source}; check the database file's path and permissions and that the store's migration ran")]
    Sqlite {
        /// What Herald was doing.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The outbox refused an event.
    #[error("outbox: {0}")]
    Outbox(#[from] herald_outbox::Error),
    /// Encoding an event into an envelope failed.
    #[error("{0}")]
    Herald(#[from] herald::Error),
    /// A stored event or message could not be decoded into the type that reads it.
    #[error("cannot decode `{event_type}` v{event_version} (event {event_id}): {reason}")]
    Decode {
        /// The event name.
        event_type: String,
        /// Its stored version.
        event_version: u32,
        /// Its id.
        event_id: String,
        /// What went wrong, and what to do.
        reason: String,
    },
    /// A stream holds an event its aggregate does not list among its events.
    #[error("stream `{stream}` holds `{event_type}`, which is not one of the aggregate's events; add it to the aggregate's event_set! or upcast it into one")]
    Foreign {
        /// The stream.
        stream: String,
        /// The unexpected event's name.
        event_type: String,
    },
    /// Stored data (a snapshot, a saga's state, a timeout) is not what the code expects.
    #[error("invalid stored data: {0}")]
    Data(String),
    /// A name that would be spliced into SQL is not a plain identifier.
    #[error("`{0}` is not a valid SQL identifier: use letters, digits and `_`, starting with a letter or `_`, at most 48 characters")]
    Identifier(String),
    /// A projection's own code failed; its transaction was rolled back, so nothing of the batch
    /// (and no checkpoint) was written.
    #[error("projection `{projection}` failed on event {event_id} (`{event_type}`): {source}; nothing of the batch was applied, it is retried")]
    Projection {
        /// The projection.
        projection: String,
        /// The event it failed on.
        event_id: String,
        /// Its type.
        event_type: String,
        /// The projection's error.
        #[source]
        source: BoxError,
    },
    /// A message for a saga instance that does not exist and that does not start one.
    #[error("saga `{saga}` has no instance `{instance}` and `{event_type}` does not start one; the message is retried (an instance may be committing) and dead-lettered if it never appears")]
    NoInstance {
        /// The saga.
        saga: String,
        /// The instance id taken from the message.
        instance: String,
        /// The message's type.
        event_type: String,
    },
    /// Optimistic concurrency kept failing.
    #[error("`{what}` lost {attempts} races in a row to concurrent writers; retry later or reduce contention on it")]
    TooManyConflicts {
        /// The stream or saga instance.
        what: String,
        /// How many attempts were made.
        attempts: u32,
    },
    /// A projection that is not registered in the store.
    #[error(
        "no projection named `{0}` in this store; `herald projections list --database ...` lists them"
    )]
    UnknownProjection(String),
    /// A URL the store cannot open.
    #[error("`{0}` is not an event store URL: use sqlite://PATH, postgres://... or a libpq conninfo (host=... dbname=...)")]
    Url(String),
    /// A blocking task panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What running a command can end in: the aggregate refused it, or the store failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error + 'static> {
    /// The aggregate refused the command (a domain error, returned as it was).
    #[error(transparent)]
    Domain(E),
    /// Loading or appending failed (after retrying conflicts).
    #[error(transparent)]
    Store(#[from] Error),
}

impl<E: std::error::Error + 'static> CommandError<E> {
    /// The domain error, if that is what this is.
    pub fn domain(&self) -> Option<&E> {
        match self {
            CommandError::Domain(e) => Some(e),
            CommandError::Store(_) => None,
        }
    }
}

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
