-- Herald inbox: processed event ids per consumer. Placeholders: {schema}, {table}.
CREATE TABLE IF NOT EXISTS {schema}.{table} (
    consumer    TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('processing', 'done')),
    expires_at  TIMESTAMPTZ NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX IF NOT EXISTS {table}_expires ON {schema}.{table} (expires_at);
