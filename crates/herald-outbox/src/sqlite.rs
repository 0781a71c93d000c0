//! SQLite outbox.
