-- Herald outbox table. Placeholders: {schema}, {table}, {channel}.
CREATE TABLE IF NOT EXISTS {schema}.{table} (
    id            BIGSERIAL PRIMARY KEY,
    event_id      TEXT NOT NULL DEFAULT gen_random_uuid()::text,
    aggregate     TEXT NOT NULL,
    routing_key   TEXT NOT NULL,
    event_type    TEXT NOT NULL,
    headers       JSONB NOT NULL DEFAULT '{}'::jsonb,
    body          TEXT NOT NULL,
    status        TEXT NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'processing', 'sent', 'completed', 'failed')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    claim_token   TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    available_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    processing_started_at TIMESTAMPTZ,
    processed_at  TIMESTAMPTZ,
    sent_at       TIMESTAMPTZ,
    completed_at  TIMESTAMPTZ
) WITH (fillfactor = 70);
CREATE UNIQUE INDEX IF NOT EXISTS {table}_event_id ON {schema}.{table} (event_id);
-- Claiming scans the open rows in order; the ordering check looks up open rows per aggregate.
-- "Open" is `sent_at IS NULL AND completed_at IS NULL` (pending, processing, failed) rather than
-- a test on `status`, so that claiming (which changes status, not the indexed columns) is a HOT
-- update, with room left on each page by the fill factor.
CREATE INDEX IF NOT EXISTS {table}_open ON {schema}.{table} (id)
    WHERE sent_at IS NULL AND completed_at IS NULL;
CREATE INDEX IF NOT EXISTS {table}_aggregate_open ON {schema}.{table} (aggregate, id)
    WHERE sent_at IS NULL AND completed_at IS NULL;
CREATE INDEX IF NOT EXISTS {table}_done ON {schema}.{table} (sent_at)
    WHERE status IN ('sent', 'completed');
CREATE TABLE IF NOT EXISTS {schema}.{table}_archive (LIKE {schema}.{table});
-- A hint for relays: one NOTIFY per inserting statement (relays still poll).
CREATE OR REPLACE FUNCTION {schema}.{table}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{channel}', '');
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS {table}_notify ON {schema}.{table};
CREATE TRIGGER {table}_notify AFTER INSERT ON {schema}.{table}
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.{table}_notify();
