-- Herald inbox table for SQLite. Placeholder: {table}.
CREATE TABLE IF NOT EXISTS {table} (
    consumer    TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('processing', 'done')),
    expires_at  INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL,
    PRIMARY KEY (consumer, event_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS {table}_expires ON {table} (expires_at);
