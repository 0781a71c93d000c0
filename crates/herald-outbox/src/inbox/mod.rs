//! The idempotent inbox.
