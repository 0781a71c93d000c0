-- Herald outbox table for SQLite. Times are Unix milliseconds. Placeholder: {table}.
CREATE TABLE IF NOT EXISTS {table} (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id      TEXT NOT NULL UNIQUE DEFAULT (lower(hex(randomblob(16)))),
    aggregate     TEXT NOT NULL,
    routing_key   TEXT NOT NULL,
    event_type    TEXT NOT NULL,
    headers       TEXT NOT NULL DEFAULT '{}',
    body          TEXT NOT NULL,
    status        TEXT NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'processing', 'sent', 'completed', 'failed')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    claim_token   TEXT,
    created_at    INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)),
    available_at  INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)),
    processing_started_at INTEGER,
    processed_at  INTEGER,
    sent_at       INTEGER,
    completed_at  INTEGER
);
CREATE INDEX IF NOT EXISTS {table}_open ON {table} (id)
    WHERE status IN ('pending', 'processing', 'failed');
CREATE INDEX IF NOT EXISTS {table}_aggregate_open ON {table} (aggregate, id)
    WHERE status IN ('pending', 'processing', 'failed');
CREATE INDEX IF NOT EXISTS {table}_done ON {table} (sent_at)
    WHERE status IN ('sent', 'completed');
CREATE TABLE IF NOT EXISTS {table}_archive AS SELECT * FROM {table} WHERE 0;
