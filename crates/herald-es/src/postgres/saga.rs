//! Saga instances, timeouts and handled-message ids in the store's PostgreSQL schema.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald_outbox::StagedEvent;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Statement, Transaction};

use super::{i64_of, PgEventStore};
use crate::error::{pg, Error, Result};
use crate::saga::{
    CommitOutcome, DueTimeout, InstanceQuery, SagaCommit, SagaInstance, SagaInstanceInfo,
    SagaStatus, SagaStore, Trigger,
};

type BoxedQuery<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64>> + Send + 'a>>;

fn step<'a>(
    tx: &'a Transaction<'_>,
    statement: &'a Statement,
    params: Vec<&'a (dyn ToSql + Sync)>,
    what: &'static str,
) -> BoxedQuery<'a> {
    Box::pin(async move { tx.execute(statement, &params).await.map_err(pg(what)) })
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
        let s = &self.schema;
        let mut conn = self.pool.get().await?;
        // Prepared (once per connection) before the transaction borrows the connection.
        let trigger = match c.trigger {
            Trigger::Message(_) => format!(
                "INSERT INTO {s}.es_saga_handled (saga, message_id, instance_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
            ),
            Trigger::Timeout(_) => format!("DELETE FROM {s}.es_saga_timeouts WHERE id = $1"),
        };
        let trigger = conn.prepare(&trigger).await?;
        let save = if c.expected_version == 0 {
            conn.prepare(&format!(
                "INSERT INTO {s}.es_sagas (saga, instance_id, correlation_id, state, state_name, status, compensations, version)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 1) ON CONFLICT DO NOTHING"
            ))
            .await?
        } else {
            conn.prepare(&format!(
                "UPDATE {s}.es_sagas SET state = $4, state_name = $5, status = $6, compensations = $7,
                     version = version + 1, updated_at = now()
                 WHERE saga = $1 AND instance_id = $2 AND version = $8 AND $3::text IS NOT NULL"
            ))
            .await?
        };
        let cancel = conn
            .prepare(&format!(
                "DELETE FROM {s}.es_saga_timeouts WHERE saga = $1 AND instance_id = $2 AND ($3 OR key = ANY($4))"
            ))
            .await?;
        let schedule = conn
            .prepare(&format!(
                "INSERT INTO {s}.es_saga_timeouts (saga, instance_id, key, due_at, payload) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (saga, instance_id, key) DO UPDATE SET due_at = EXCLUDED.due_at, payload = EXCLUDED.payload"
            ))
            .await?;
        let stage = conn
            .prepare(&format!(
                "INSERT INTO {} (event_id, aggregate, routing_key, event_type, headers, body)
                 SELECT i, a, k, t, h::jsonb, b FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
                 WITH ORDINALITY AS u(i, a, k, t, h, b, n) ORDER BY n",
                self.outbox.qualified()
            ))
            .await?;

        let status = c.status.as_str();
        let expected = i64_of(c.expected_version);
        let rows = c
            .outbox
            .iter()
            .map(StagedEvent::from_envelope)
            .collect::<Result<Vec<_>, _>>()?;
        let col = |f: fn(&StagedEvent) -> &String| rows.iter().map(f).collect::<Vec<&String>>();
        let outbox_columns = (
            col(|r| &r.event_id),
            col(|r| &r.aggregate),
            col(|r| &r.routing_key),
            col(|r| &r.event_type),
            col(|r| &r.headers),
            col(|r| &r.body),
        );
        let timeout_id = match &c.trigger {
            Trigger::Timeout(id) => *id,
            Trigger::Message(_) => 0,
        };

        let tx = conn
            .client_mut()
            .transaction()
            .await
            .map_err(pg("starting a saga transition"))?;
        // The statements are pipelined: sent together, run in order, answered together.
        let run = |st, params, what| step(&tx, st, params, what);
        let mut steps: Vec<BoxedQuery<'_>> = Vec::new();
        steps.push(match &c.trigger {
            Trigger::Message(id) => run(
                &trigger,
                vec![&c.saga, id, &c.instance_id],
                "recording a handled message",
            ),
            Trigger::Timeout(_) => run(&trigger, vec![&timeout_id], "taking a due timeout"),
        });
        let mut save_params: Vec<&(dyn ToSql + Sync)> = vec![
            &c.saga,
            &c.instance_id,
            &c.correlation_id,
            &c.state,
            &c.state_name,
            &status,
            &c.compensations,
        ];
        if c.expected_version > 0 {
            save_params.push(&expected);
        }
        steps.push(run(&save, save_params, "saving a saga instance"));
        if c.cancel_all || !c.cancel.is_empty() {
            steps.push(run(
                &cancel,
                vec![&c.saga, &c.instance_id, &c.cancel_all, &c.cancel],
                "dropping saga timeouts",
            ));
        }
        for t in &c.schedule {
            steps.push(run(
                &schedule,
                vec![&c.saga, &c.instance_id, &t.key, &t.due_at, &t.payload],
                "scheduling a saga timeout",
            ));
        }
        if !rows.is_empty() {
            steps.push(run(
                &stage,
                vec![
                    &outbox_columns.0,
                    &outbox_columns.1,
                    &outbox_columns.2,
                    &outbox_columns.3,
                    &outbox_columns.4,
                    &outbox_columns.5,
                ],
                "staging saga messages",
            ));
        }
        let counts = futures::future::try_join_all(steps).await?;
        if counts[0] == 0 {
            return Ok(CommitOutcome::Duplicate);
        }
        if counts[1] == 0 {
            return Ok(CommitOutcome::Conflict);
        }
        tx.commit()
            .await
            .map_err(pg("committing a saga transition"))?;
        Ok(CommitOutcome::Committed)
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
