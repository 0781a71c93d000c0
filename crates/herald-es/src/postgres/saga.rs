//! Saga instances, timeouts and handled-message ids in the store's PostgreSQL schema.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald_outbox::StagedEvent;
use tokio_postgres::types::ToSql;

use super::{i64_of, PgEventStore};
use crate::error::{pg, Error, Result};
use crate::saga::{
    CommitOutcome, DueTimeout, InstanceQuery, SagaCommit, SagaInstance, SagaInstanceInfo,
    SagaStatus, SagaStore, Trigger,
};

/// A transition is one statement (autocommit): the trigger is checked (a message not handled
/// before, a timeout still there), the instance compared-and-set, and only when that wrote a row
/// are the trigger recorded, the timeouts written and dropped and the messages staged. A
/// duplicate or a lost race writes nothing at all.
///
/// The statement holds only the parts a transition uses (PostgreSQL sets up every part of a
/// statement on each execution, used or not): one variant per combination, each prepared once
/// per connection. Every variant takes the same 21 parameters; those of the parts it leaves out
/// are typed in its last line.
pub(super) struct SagaSql {
    /// By [`Parts::index`].
    variants: Vec<String>,
}

/// Which parts a transition's statement needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Parts {
    /// Write a new instance (else update an existing one at its version).
    pub new: bool,
    /// A message triggered it: record its id.
    pub message: bool,
    /// A timeout triggered it: delete that timeout.
    pub fired: bool,
    /// Drop pending timeouts (all, or by key).
    pub cancel: bool,
    /// Schedule timeouts.
    pub schedule: bool,
    /// Stage messages in the outbox.
    pub stage: bool,
}

impl Parts {
    fn index(self) -> usize {
        [
            self.new,
            self.message,
            self.fired,
            self.cancel,
            self.schedule,
            self.stage,
        ]
        .iter()
        .enumerate()
        .map(|(i, on)| usize::from(*on) << i)
        .sum()
    }

    fn all() -> impl Iterator<Item = Parts> {
        (0..64usize).map(|i| Parts {
            new: i & 1 != 0,
            message: i & 2 != 0,
            fired: i & 4 != 0,
            cancel: i & 8 != 0,
            schedule: i & 16 != 0,
            stage: i & 32 != 0,
        })
    }
}

const HANDLED: &str = "
), h AS (
    INSERT INTO {s}.es_saga_handled (saga, message_id, instance_id)
    SELECT $1, $9, $2 FROM saved WHERE $9::text IS NOT NULL";
const FIRED: &str = "
), fired AS (
    DELETE FROM {s}.es_saga_timeouts
    WHERE id = $10 AND EXISTS (SELECT 1 FROM saved) AND NOT (key = ANY($13::text[]))";
const CANCELLED: &str = "
), cancelled AS (
    DELETE FROM {s}.es_saga_timeouts
    WHERE saga = $1 AND instance_id = $2 AND id <> $10 AND ($11 OR key = ANY($12::text[]))
      AND EXISTS (SELECT 1 FROM saved)";
const SCHEDULED: &str = "
), scheduled AS (
    INSERT INTO {s}.es_saga_timeouts (saga, instance_id, key, due_at, payload)
    SELECT $1, $2, u.k, u.d, u.p FROM saved, unnest($13::text[], $14::timestamptz[], $15::text[]) AS u(k, d, p)
    ON CONFLICT (saga, instance_id, key) DO UPDATE SET due_at = EXCLUDED.due_at, payload = EXCLUDED.payload";
const STAGED: &str = "
), staged AS (
    INSERT INTO {outbox} (event_id, aggregate, routing_key, event_type, headers, body)
    SELECT u.i, u.a, u.k, u.t, u.h::jsonb, u.b
    FROM saved, unnest($16::text[], $17::text[], $18::text[], $19::text[], $20::text[], $21::text[])
         WITH ORDINALITY AS u(i, a, k, t, h, b, n)
    ORDER BY u.n";

impl SagaSql {
    pub(super) fn new(schema: &str, outbox: &str) -> Self {
        let head = format!(
            "WITH fresh AS (
                SELECT NOT EXISTS (SELECT 1 FROM {schema}.es_saga_handled WHERE saga = $1 AND message_id = $9::text)
                   AND ($10::bigint = 0 OR EXISTS (SELECT 1 FROM {schema}.es_saga_timeouts WHERE id = $10)) AS ok
            ), saved AS ("
        );
        let commit_new = format!(
            "{head}
                INSERT INTO {schema}.es_sagas (saga, instance_id, correlation_id, state, state_name, status, compensations, version)
                SELECT $1, $2, $3, $4, $5, $6, $7, 1 WHERE (SELECT ok FROM fresh) AND $8::bigint = 0
                ON CONFLICT DO NOTHING
                RETURNING 1"
        );
        let commit_next = format!(
            "{head}
                UPDATE {schema}.es_sagas SET state = $4, state_name = $5, status = $6, compensations = $7,
                    version = version + 1, updated_at = now()
                WHERE saga = $1 AND instance_id = $2 AND version = $8 AND (SELECT ok FROM fresh)
                  AND $3::text IS NOT NULL
                RETURNING 1"
        );
        let variants = Parts::all()
            .map(|p| {
                let mut sql = if p.new {
                    commit_new.clone()
                } else {
                    commit_next.clone()
                };
                // The parameters of the parts left out, typed so the statement prepares.
                let mut unused: Vec<&str> = Vec::new();
                for (on, part, params) in [
                    (p.message, HANDLED, &[][..]),
                    (p.fired, FIRED, &[][..]),
                    (p.cancel, CANCELLED, &["$11::bool", "$12::text[]"][..]),
                    (
                        p.schedule,
                        SCHEDULED,
                        &["$13::text[]", "$14::timestamptz[]", "$15::text[]"][..],
                    ),
                    (
                        p.stage,
                        STAGED,
                        &[
                            "$16::text[]",
                            "$17::text[]",
                            "$18::text[]",
                            "$19::text[]",
                            "$20::text[]",
                            "$21::text[]",
                        ][..],
                    ),
                ] {
                    if on {
                        sql.push_str(&part.replace("{s}", schema).replace("{outbox}", outbox));
                    } else {
                        unused.extend(params);
                    }
                }
                sql.push_str(
                    "\n)\nSELECT (SELECT count(*) FROM saved)::bigint, (SELECT ok FROM fresh)",
                );
                if !unused.is_empty() {
                    sql.push_str(&format!(", ({}) IS NULL", unused.join(", ")));
                }
                sql
            })
            .collect();
        SagaSql { variants }
    }

    /// The statement for a transition with these parts.
    pub(super) fn commit(&self, parts: Parts) -> &str {
        &self.variants[parts.index()]
    }
}

#[async_trait]
impl SagaStore for PgEventStore {
    fn saga_service(&self) -> &str {
        &self.service
    }

    async fn load_instance(&self, saga: &str, instance_id: &str) -> Result<Option<SagaInstance>> {
        let mut conn = self.pool.get().await?;
        let statement = conn
            .prepare(&format!(
                "SELECT correlation_id, state, state_name, status, version, compensations
                 FROM {}.es_sagas WHERE saga = $1 AND instance_id = $2",
                self.schema
            ))
            .await?;
        let row = conn
            .client()
            .query_opt(&statement, &[&saga, &instance_id])
            .await
            .map_err(pg("loading a saga instance"))?;
        row.map(|r| {
            let status: String = r.get(3);
            Ok(SagaInstance {
                instance_id: instance_id.to_string(),
                correlation_id: r.get(0),
                state: r.get(1),
                state_name: r.get(2),
                status: SagaStatus::parse(&status)
                    .ok_or_else(|| Error::Data(format!("unknown saga status `{status}`")))?,
                version: r.get::<_, i64>(4).max(0) as u64,
                compensations: r.get(5),
            })
        })
        .transpose()
    }

    async fn commit_transition(&self, c: &SagaCommit) -> Result<CommitOutcome> {
        let (message_id, timeout_id): (Option<&str>, i64) = match &c.trigger {
            Trigger::Message(id) => (Some(id.as_str()), 0),
            Trigger::Timeout(id) => (None, *id),
        };
        let sql = self.saga_sql.commit(Parts {
            new: c.expected_version == 0,
            message: message_id.is_some(),
            fired: timeout_id != 0,
            cancel: c.cancel_all || !c.cancel.is_empty(),
            schedule: !c.schedule.is_empty(),
            stage: !c.outbox.is_empty(),
        });
        let status = c.status.as_str();
        let expected = i64_of(c.expected_version);
        let schedule_keys: Vec<&str> = c.schedule.iter().map(|t| t.key.as_str()).collect();
        let schedule_due: Vec<DateTime<Utc>> = c.schedule.iter().map(|t| t.due_at).collect();
        let schedule_payloads: Vec<&str> = c.schedule.iter().map(|t| t.payload.as_str()).collect();
        let rows = c
            .outbox
            .iter()
            .map(StagedEvent::from_envelope)
            .collect::<Result<Vec<_>, _>>()?;
        let col = |f: fn(&StagedEvent) -> &String| rows.iter().map(f).collect::<Vec<&String>>();
        let (ids, aggregates, keys, types, headers, bodies) = (
            col(|r| &r.event_id),
            col(|r| &r.aggregate),
            col(|r| &r.routing_key),
            col(|r| &r.event_type),
            col(|r| &r.headers),
            col(|r| &r.body),
        );
        let params: [&(dyn ToSql + Sync); 21] = [
            &c.saga,
            &c.instance_id,
            &c.correlation_id,
            &c.state,
            &c.state_name,
            &status,
            &c.compensations,
            &expected,
            &message_id,
            &timeout_id,
            &c.cancel_all,
            &c.cancel,
            &schedule_keys,
            &schedule_due,
            &schedule_payloads,
            &ids,
            &aggregates,
            &keys,
            &types,
            &headers,
            &bodies,
        ];
        let mut conn = self.pool.get().await?;
        let statement = conn.prepare(sql).await?;
        let row = conn
            .client()
            .query_one(&statement, &params)
            .await
            .map_err(pg("committing a saga transition"))?;
        let saved: i64 = row.get(0);
        let fresh: bool = row.get(1);
        Ok(if saved > 0 {
            CommitOutcome::Committed
        } else if !fresh {
            CommitOutcome::Duplicate
        } else {
            CommitOutcome::Conflict
        })
    }

    async fn due_timeouts(&self, saga: &str, limit: usize) -> Result<Vec<DueTimeout>> {
        let conn = self.pool.get().await?;
        let rows = conn
            .client()
            .query(
                &format!(
                    "SELECT id, instance_id, key, due_at, payload FROM {}.es_saga_timeouts
                     WHERE saga = $1 AND due_at <= now() ORDER BY due_at LIMIT $2",
                    self.schema
                ),
                &[&saga, &(limit as i64)],
            )
            .await
            .map_err(pg("reading due timeouts"))?;
        Ok(rows
            .iter()
            .map(|r| DueTimeout {
                id: r.get(0),
                instance_id: r.get(1),
                key: r.get(2),
                due_at: r.get(3),
                payload: r.get(4),
            })
            .collect())
    }

    async fn drop_timeout(&self, id: i64) -> Result<()> {
        let conn = self.pool.get().await?;
        conn.client()
            .execute(
                &format!("DELETE FROM {}.es_saga_timeouts WHERE id = $1", self.schema),
                &[&id],
            )
            .await
            .map_err(pg("dropping a timeout"))?;
        Ok(())
    }

    async fn instances(&self, q: &InstanceQuery) -> Result<Vec<SagaInstanceInfo>> {
        let s = &self.schema;
        let order = if q.stuck_only {
            "s.updated_at"
        } else {
            "s.started_at"
        };
        let conn = self.pool.get().await?;
        let rows = conn
            .client()
            .query(
                &format!(
                    "SELECT s.saga, s.instance_id, s.correlation_id, s.state_name, s.status, s.version,
                            s.started_at, s.updated_at,
                            (SELECT min(t.due_at) FROM {s}.es_saga_timeouts t
                             WHERE t.saga = s.saga AND t.instance_id = s.instance_id)
                     FROM {s}.es_sagas s
                     WHERE ($1::text IS NULL OR s.saga = $1) AND (NOT $2 OR s.status = 'active')
                     ORDER BY {order} LIMIT $3"
                ),
                &[&q.saga, &q.stuck_only, &(q.limit.max(1) as i64)],
            )
            .await
            .map_err(pg("listing saga instances"))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let status: String = r.get(4);
            let next: Option<DateTime<Utc>> = r.get(8);
            let info = SagaInstanceInfo::new(
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                SagaStatus::parse(&status)
                    .ok_or_else(|| Error::Data(format!("unknown saga status `{status}`")))?,
                r.get::<_, i64>(5).max(0) as u64,
                r.get(6),
                r.get(7),
                next,
                q.stuck_after,
            );
            if !q.stuck_only || info.stuck {
                out.push(info);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::connect_client;

    /// Every combination of parts is a statement PostgreSQL accepts (the tests' local server).
    #[tokio::test]
    async fn every_variant_prepares() {
        let pg = "host=127.0.0.1 port=5432 user=postgres dbname=test";
        let schema = format!(
            "es_saga_sql_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let store = PgEventStore::builder(pg)
            .schema(&schema)
            .connect()
            .await
            .unwrap();
        let c = connect_client(pg).await.unwrap();
        for parts in Parts::all() {
            let sql = store.saga_sql.commit(parts);
            if let Err(e) = c.prepare(sql).await {
                panic!("{parts:?}: {e}\n{sql}");
            }
        }
        c.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await
            .unwrap();
    }
}
