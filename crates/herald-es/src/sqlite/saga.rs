//! Saga instances, timeouts and handled-message ids in the store's SQLite file.

use async_trait::async_trait;
use herald_outbox::StagedEvent;
use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::{now_ms, time_of, SqliteEventStore};
use crate::error::{sql, Error, Result};
use crate::saga::{
    CommitOutcome, DueTimeout, InstanceQuery, SagaCommit, SagaInstance, SagaInstanceInfo,
    SagaStatus, SagaStore, Trigger,
};

fn status_of(s: &str) -> Result<SagaStatus> {
    SagaStatus::parse(s).ok_or_else(|| Error::Data(format!("unknown saga status `{s}`")))
}

#[async_trait]
impl SagaStore for SqliteEventStore {
    fn saga_service(&self) -> &str {
        &self.service
    }

    async fn load_instance(&self, saga: &str, instance_id: &str) -> Result<Option<SagaInstance>> {
        let (saga, id) = (saga.to_string(), instance_id.to_string());
        self.with_connection(move |c| {
            let row = c
                .prepare_cached(
                    "SELECT correlation_id, state, state_name, status, version, compensations
                     FROM es_sagas WHERE saga = ?1 AND instance_id = ?2",
                )
                .map_err(sql("loading a saga instance"))?
                .query_row(params![saga, id], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, String>(5)?,
                    ))
                })
                .optional()
                .map_err(sql("loading a saga instance"))?;
            row.map(
                |(correlation_id, state, state_name, status, version, compensations)| {
                    Ok(SagaInstance {
                        instance_id: id.clone(),
                        correlation_id,
                        state,
                        state_name,
                        status: status_of(&status)?,
                        version: version.max(0) as u64,
                        compensations,
                    })
                },
            )
            .transpose()
        })
        .await
    }

    async fn commit_transition(&self, commit: &SagaCommit) -> Result<CommitOutcome> {
        let (c, outbox) = (commit.clone(), self.outbox.clone());
        self.with_connection(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql("starting a saga transition"))?;
            let now = now_ms();
            let new = match &c.trigger {
                Trigger::Message(id) => tx
                    .execute(
                        "INSERT INTO es_saga_handled (saga, message_id, instance_id, handled_at) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT DO NOTHING",
                        params![c.saga, id, c.instance_id, now],
                    )
                    .map_err(sql("recording a handled message"))?,
                Trigger::Timeout(id) => tx
                    .execute("DELETE FROM es_saga_timeouts WHERE id = ?1", [id])
                    .map_err(sql("taking a due timeout"))?,
            };
            if new == 0 {
                return Ok(CommitOutcome::Duplicate);
            }
            let saved = if c.expected_version == 0 {
                tx.execute(
                    "INSERT INTO es_sagas (saga, instance_id, correlation_id, state, state_name, status, compensations, version, started_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1, ?8, ?8) ON CONFLICT DO NOTHING",
                    params![c.saga, c.instance_id, c.correlation_id, c.state, c.state_name, c.status.as_str(), c.compensations, now],
                )
            } else {
                tx.execute(
                    "UPDATE es_sagas SET state = ?3, state_name = ?4, status = ?5, compensations = ?6,
                         version = version + 1, updated_at = ?7
                     WHERE saga = ?1 AND instance_id = ?2 AND version = ?8",
                    params![c.saga, c.instance_id, c.state, c.state_name, c.status.as_str(), c.compensations, now, c.expected_version as i64],
                )
            }
            .map_err(sql("saving a saga instance"))?;
            if saved == 0 {
                return Ok(CommitOutcome::Conflict);
            }
            if c.cancel_all {
                tx.execute(
                    "DELETE FROM es_saga_timeouts WHERE saga = ?1 AND instance_id = ?2",
                    params![c.saga, c.instance_id],
                )
                .map_err(sql("dropping saga timeouts"))?;
            } else {
                for key in &c.cancel {
                    tx.execute(
                        "DELETE FROM es_saga_timeouts WHERE saga = ?1 AND instance_id = ?2 AND key = ?3",
                        params![c.saga, c.instance_id, key],
                    )
                    .map_err(sql("dropping a saga timeout"))?;
                }
            }
            for t in &c.schedule {
                tx.execute(
                    "INSERT INTO es_saga_timeouts (saga, instance_id, key, due_at, payload) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (saga, instance_id, key) DO UPDATE SET due_at = excluded.due_at, payload = excluded.payload",
                    params![c.saga, c.instance_id, t.key, t.due_at.timestamp_millis(), t.payload],
                )
                .map_err(sql("scheduling a saga timeout"))?;
            }
            for e in &c.outbox {
                outbox.stage_row(&tx, &StagedEvent::from_envelope(e)?)?;
            }
            tx.commit().map_err(sql("committing a saga transition"))?;
            Ok(CommitOutcome::Committed)
        })
        .await
    }

    async fn due_timeouts(&self, saga: &str, limit: usize) -> Result<Vec<DueTimeout>> {
        let saga = saga.to_string();
        self.with_connection(move |c| {
            let mut st = c
                .prepare_cached(
                    "SELECT id, instance_id, key, due_at, payload FROM es_saga_timeouts
                     WHERE saga = ?1 AND due_at <= ?2 ORDER BY due_at LIMIT ?3",
                )
                .map_err(sql("reading due timeouts"))?;
            let rows = st
                .query_map(params![saga, now_ms(), limit as i64], |r| {
                    Ok(DueTimeout {
                        id: r.get(0)?,
                        instance_id: r.get(1)?,
                        key: r.get(2)?,
                        due_at: time_of(r.get(3)?),
                        payload: r.get(4)?,
                    })
                })
                .map_err(sql("reading due timeouts"))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql("reading due timeouts"))?;
            Ok(rows)
        })
        .await
    }

    async fn drop_timeout(&self, id: i64) -> Result<()> {
        self.with_connection(move |c| {
            c.execute("DELETE FROM es_saga_timeouts WHERE id = ?1", [id])
                .map_err(sql("dropping a timeout"))?;
            Ok(())
        })
        .await
    }

    async fn instances(&self, query: &InstanceQuery) -> Result<Vec<SagaInstanceInfo>> {
        let q = query.clone();
        self.with_connection(move |c| {
            let order = if q.stuck_only { "s.updated_at" } else { "s.started_at" };
            let mut st = c
                .prepare(&format!(
                    "SELECT s.saga, s.instance_id, s.correlation_id, s.state_name, s.status, s.version,
                            s.started_at, s.updated_at,
                            (SELECT min(t.due_at) FROM es_saga_timeouts t
                             WHERE t.saga = s.saga AND t.instance_id = s.instance_id)
                     FROM es_sagas s
                     WHERE (?1 IS NULL OR s.saga = ?1) AND (NOT ?2 OR s.status = 'active')
                     ORDER BY {order} LIMIT ?3"
                ))
                .map_err(sql("listing saga instances"))?;
            let rows = st
                .query_map(params![q.saga, q.stuck_only, q.limit.max(1) as i64], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, i64>(6)?,
                        r.get::<_, i64>(7)?,
                        r.get::<_, Option<i64>>(8)?,
                    ))
                })
                .map_err(sql("listing saga instances"))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql("listing saga instances"))?;
            let mut out = Vec::with_capacity(rows.len());
            for (saga, id, correlation, state_name, status, version, started, updated, next) in rows {
                let info = SagaInstanceInfo::new(
                    saga,
                    id,
                    correlation,
                    state_name,
                    status_of(&status)?,
                    version.max(0) as u64,
                    time_of(started),
                    time_of(updated),
                    next.map(time_of),
                    q.stuck_after,
                );
                if !q.stuck_only || info.stuck {
                    out.push(info);
                }
            }
            Ok(out)
        })
        .await
    }
}
