//! SQLite inbox (next).
