//! Migrations Herald ships, applied once per schema and table, under an advisory lock so several
//! processes may start at once.

use tokio_postgres::Client;

use crate::error::{pg, Result};

/// The outbox table's migrations: (name, SQL with `{schema}`, `{table}`, `{channel}`).
pub(crate) const OUTBOX: &[(&str, &str)] = &[
    ("0001_outbox", include_str!("migrations/0001_outbox.sql")),
    (
        "0002_outbox_hot_claims",
        include_str!("migrations/0002_outbox_hot_claims.sql"),
    ),
    (
        "0003_outbox_one_notifier",
        include_str!("migrations/0003_outbox_one_notifier.sql"),
    ),
];

/// The inbox table's migrations.
pub(crate) const INBOX: &[(&str, &str)] =
    &[("0001_inbox", include_str!("migrations/0001_inbox.sql"))];

/// Render a migration for a schema and table.
pub(crate) fn render(sql: &str, schema: &str, table: &str) -> String {
    sql.replace("{schema}", schema)
        .replace("{table}", table)
        .replace("{channel}", &channel(schema, table))
}

/// The NOTIFY channel of an outbox table.
pub(crate) fn channel(schema: &str, table: &str) -> String {
    format!("{schema}_{table}")
}

/// Apply the migrations not yet recorded in `{schema}.herald_migrations`.
pub(crate) async fn migrate(
    client: &mut Client,
    schema: &str,
    table: &str,
    migrations: &[(&str, &str)],
) -> Result<usize> {
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
    for (name, sql) in migrations {
        let key = format!("{table}:{name}");
        let done = tx
            .query_opt(
                &format!("SELECT 1 FROM {schema}.herald_migrations WHERE name = $1"),
                &[&key],
            )
            .await
            .map_err(pg("reading applied migrations"))?;
        if done.is_some() {
            continue;
        }
        tracing::info!(migration = %key, schema, "applying Herald migration");
        tx.batch_execute(&render(sql, schema, table))
            .await
            .map_err(pg("applying a migration"))?;
        tx.execute(
            &format!("INSERT INTO {schema}.herald_migrations (name) VALUES ($1)"),
            &[&key],
        )
        .await
        .map_err(pg("recording a migration"))?;
        applied += 1;
    }
    tx.commit().await.map_err(pg("committing the migration"))?;
    Ok(applied)
}
