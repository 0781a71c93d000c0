//! The store's migrations, applied once per schema under an advisory lock, recorded in the same
//! `herald_migrations` table the outbox uses.

use tokio_postgres::Client;

use crate::error::{pg, Result};

/// (name, SQL with `{schema}`).
const MIGRATIONS: &[(&str, &str)] = &[("herald_es:0001_store", include_str!("schema.sql"))];

/// Apply the migrations not yet recorded in `{schema}.herald_migrations`.
pub(crate) async fn migrate(client: &mut Client, schema: &str) -> Result<usize> {
    let tx = client
        .transaction()
        .await
        .map_err(pg("starting the migration"))?;
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .await
        .map_err(pg("starting the migration"))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('herald_migrations'))",
        &[],
    )
    .await
    .map_err(pg("taking the migration lock"))?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.herald_migrations (
             name TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    ))
    .await
    .map_err(pg("creating the migrations table"))?;
    let mut applied = 0;
    for (name, sql) in MIGRATIONS {
        let done = tx
            .query_opt(
                &format!("SELECT 1 FROM {schema}.herald_migrations WHERE name = $1"),
                &[name],
            )
            .await
            .map_err(pg("reading applied migrations"))?;
        if done.is_some() {
            continue;
        }
        tracing::info!(migration = %name, schema, "applying Herald migration");
        tx.batch_execute(&sql.replace("{schema}", schema))
            .await
            .map_err(pg("applying a migration"))?;
        tx.execute(
            &format!("INSERT INTO {schema}.herald_migrations (name) VALUES ($1)"),
            &[name],
        )
        .await
        .map_err(pg("recording a migration"))?;
        applied += 1;
    }
    tx.commit().await.map_err(pg("committing the migration"))?;
    Ok(applied)
}
