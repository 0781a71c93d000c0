-- Herald event store, projections and sagas. Placeholder: {schema}.
-- Streams: one row per aggregate instance, its version. An append upserts it first, which both
-- checks the expected version and orders concurrent appends to one stream.
CREATE TABLE IF NOT EXISTS {schema}.es_streams (
    stream_id  TEXT PRIMARY KEY,
    version    BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Events. `position` is the global sequence; `tx_id` the writing transaction. Readers read in
-- (tx_id, position) order and only below the oldest transaction still in flight, so an event
-- committed late by a slow transaction is never skipped.
CREATE TABLE IF NOT EXISTS {schema}.es_events (
    position      BIGSERIAL PRIMARY KEY,
    tx_id         xid8 NOT NULL DEFAULT pg_current_xact_id(),
    stream_id     TEXT NOT NULL,
    version       BIGINT NOT NULL,
    event_id      TEXT NOT NULL,
    event_type    TEXT NOT NULL,
    event_version INTEGER NOT NULL,
    headers       TEXT NOT NULL,
    body          TEXT NOT NULL,
    recorded_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (stream_id, version)
);
CREATE UNIQUE INDEX IF NOT EXISTS es_events_event_id ON {schema}.es_events (event_id);
CREATE INDEX IF NOT EXISTS es_events_commit_order ON {schema}.es_events (tx_id, position);
CREATE TABLE IF NOT EXISTS {schema}.es_snapshots (
    stream_id      TEXT PRIMARY KEY,
    version        BIGINT NOT NULL,
    schema_version INTEGER NOT NULL,
    state          TEXT NOT NULL,
    taken_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Projections' checkpoints, written in the read model's own transaction.
CREATE TABLE IF NOT EXISTS {schema}.es_checkpoints (
    projection           TEXT PRIMARY KEY,
    tx_id                BIGINT NOT NULL DEFAULT 0,
    position             BIGINT NOT NULL DEFAULT 0,
    rebuild_requested_at TIMESTAMPTZ,
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Event ids a bus-fed projection applied (its checkpoint), in the read model's transaction.
CREATE TABLE IF NOT EXISTS {schema}.es_projection_applied (
    projection TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, event_id)
);
-- Saga instances: state, lifecycle status, version for optimistic concurrency.
CREATE TABLE IF NOT EXISTS {schema}.es_sagas (
    saga           TEXT NOT NULL,
    instance_id    TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    state          TEXT NOT NULL,
    state_name     TEXT NOT NULL,
    status         TEXT NOT NULL,
    version        BIGINT NOT NULL,
    compensations  TEXT NOT NULL DEFAULT '[]',
    started_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (saga, instance_id)
);
CREATE INDEX IF NOT EXISTS es_sagas_active ON {schema}.es_sagas (saga, updated_at) WHERE status = 'active';
-- Durable timeouts: a row until it fires (deleted in the transaction of its transition).
CREATE TABLE IF NOT EXISTS {schema}.es_saga_timeouts (
    id          BIGSERIAL PRIMARY KEY,
    saga        TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    key         TEXT NOT NULL,
    due_at      TIMESTAMPTZ NOT NULL,
    payload     TEXT NOT NULL,
    UNIQUE (saga, instance_id, key)
);
CREATE INDEX IF NOT EXISTS es_saga_timeouts_due ON {schema}.es_saga_timeouts (saga, due_at);
-- Messages each saga handled (ids), so a redelivery is not a second transition.
CREATE TABLE IF NOT EXISTS {schema}.es_saga_handled (
    saga        TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    handled_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (saga, message_id)
);
