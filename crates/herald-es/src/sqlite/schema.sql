-- Herald event store, projections and sagas for SQLite. Times are Unix milliseconds. The single
-- writer commits in position order, so readers read `position > checkpoint` and skip nothing.
CREATE TABLE IF NOT EXISTS es_streams (
    stream_id  TEXT PRIMARY KEY,
    version    INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS es_events (
    position      INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id     TEXT NOT NULL,
    version       INTEGER NOT NULL,
    event_id      TEXT NOT NULL UNIQUE,
    event_type    TEXT NOT NULL,
    event_version INTEGER NOT NULL,
    headers       TEXT NOT NULL,
    body          TEXT NOT NULL,
    recorded_at   INTEGER NOT NULL,
    UNIQUE (stream_id, version)
);
CREATE TABLE IF NOT EXISTS es_snapshots (
    stream_id      TEXT PRIMARY KEY,
    version        INTEGER NOT NULL,
    schema_version INTEGER NOT NULL,
    state          TEXT NOT NULL,
    taken_at       INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS es_checkpoints (
    projection           TEXT PRIMARY KEY,
    position             INTEGER NOT NULL DEFAULT 0,
    rebuild_requested_at INTEGER,
    updated_at           INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS es_projection_applied (
    projection TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    applied_at INTEGER NOT NULL,
    PRIMARY KEY (projection, event_id)
);
CREATE TABLE IF NOT EXISTS es_sagas (
    saga           TEXT NOT NULL,
    instance_id    TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    state          TEXT NOT NULL,
    state_name     TEXT NOT NULL,
    status         TEXT NOT NULL,
    version        INTEGER NOT NULL,
    compensations  TEXT NOT NULL DEFAULT '[]',
    started_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    PRIMARY KEY (saga, instance_id)
);
CREATE INDEX IF NOT EXISTS es_sagas_active ON es_sagas (saga, updated_at) WHERE status = 'active';
CREATE TABLE IF NOT EXISTS es_saga_timeouts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    saga        TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    key         TEXT NOT NULL,
    due_at      INTEGER NOT NULL,
    payload     TEXT NOT NULL,
    UNIQUE (saga, instance_id, key)
);
CREATE INDEX IF NOT EXISTS es_saga_timeouts_due ON es_saga_timeouts (saga, due_at);
CREATE TABLE IF NOT EXISTS es_saga_handled (
    saga        TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    handled_at  INTEGER NOT NULL,
    PRIMARY KEY (saga, message_id)
);
