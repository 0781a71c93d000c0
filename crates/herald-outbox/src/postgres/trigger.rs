//! Database triggers that stage events for a table, so writers in any language get the outbox:
//! reference 001's trigger, generated. `herald outbox trigger --table listings` calls
//! [`TriggerSpec::install`].
//!
//! Each row change stages one event, aggregate `<table>:<key>` (so changes of one row are
//! published in order), routing key `<prefix>.insert`, `<prefix>.update`, `<prefix>.delete`, and
//! for an update that changes the status column also `<prefix>.status.<new status>`. The body is
//! JSON: `{"operation", "table", "id", "new", "old", "status", "old_status"}` (`new`/`old` are the
//! whole rows).

use tokio_postgres::GenericClient;

use crate::error::{ident, pg, Result};
use crate::postgres::PgOutbox;

/// Which changes stage events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TriggerEvents {
    /// `INSERT` → `<prefix>.insert`.
    pub insert: bool,
    /// `UPDATE` → `<prefix>.update`.
    pub update: bool,
    /// `DELETE` → `<prefix>.delete`.
    pub delete: bool,
}

impl Default for TriggerEvents {
    fn default() -> Self {
        TriggerEvents {
            insert: true,
            update: true,
            delete: true,
        }
    }
}

/// A trigger to install on one table.
///
/// ```
/// use herald_outbox::postgres::{PgOutbox, TriggerSpec};
/// let outbox = PgOutbox::new("listings-db").unwrap();
/// let sql = TriggerSpec::new("listings").unwrap()
///     .prefix("listing").unwrap()
///     .status_column("status").unwrap()
///     .sql(&outbox);
/// assert!(sql.contains("'listing.status.'"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerSpec {
    schema: String,
    table: String,
    key_column: String,
    status_column: Option<String>,
    prefix: String,
    events: TriggerEvents,
}

impl TriggerSpec {
    /// A trigger on `public.<table>`, key column `id`, routing-key prefix = the table name.
    pub fn new(table: &str) -> Result<Self> {
        Ok(TriggerSpec {
            schema: "public".into(),
            table: ident(table)?.to_string(),
            key_column: "id".into(),
            status_column: None,
            prefix: table.to_string(),
            events: TriggerEvents::default(),
        })
    }

    /// The table's schema.
    pub fn schema(mut self, schema: &str) -> Result<Self> {
        self.schema = ident(schema)?.to_string();
        Ok(self)
    }

    /// The column that identifies a row (the aggregate id).
    pub fn key_column(mut self, column: &str) -> Result<Self> {
        self.key_column = ident(column)?.to_string();
        Ok(self)
    }

    /// Stage `<prefix>.status.<value>` when this column changes.
    pub fn status_column(mut self, column: &str) -> Result<Self> {
        self.status_column = Some(ident(column)?.to_string());
        Ok(self)
    }

    /// The routing-key prefix (`listing` for `listing.insert`); dot-separated identifiers.
    pub fn prefix(mut self, prefix: &str) -> Result<Self> {
        for part in prefix.split('.') {
            ident(part)?;
        }
        self.prefix = prefix.to_string();
        Ok(self)
    }

    /// Which operations stage events.
    pub fn events(mut self, events: TriggerEvents) -> Self {
        self.events = events;
        self
    }

    fn name(&self) -> String {
        format!("herald_outbox_{}", self.table)
    }

    /// The SQL that installs (or replaces) the trigger function and trigger.
    pub fn sql(&self, outbox: &PgOutbox) -> String {
        let (schema, table, key, prefix, name) = (
            &self.schema,
            &self.table,
            &self.key_column,
            &self.prefix,
            self.name(),
        );
        let target = outbox.qualified();
        let ops: Vec<&str> = [
            (self.events.insert, "INSERT"),
            (self.events.update, "UPDATE"),
            (self.events.delete, "DELETE"),
        ]
        .into_iter()
        .filter_map(|(on, op)| on.then_some(op))
        .collect();
        let ops = if ops.is_empty() {
            "INSERT".to_string()
        } else {
            ops.join(" OR ")
        };
        let (new_status, old_status, status_change) = match &self.status_column {
            Some(col) => (
                format!("to_jsonb(NEW) -> '{col}'"),
                format!("to_jsonb(OLD) -> '{col}'"),
                format!(
                    "IF TG_OP = 'UPDATE' AND NEW.{col} IS DISTINCT FROM OLD.{col} AND NEW.{col} IS NOT NULL THEN
        rk := '{prefix}.status.' || lower(regexp_replace(NEW.{col}::text, '[^A-Za-z0-9_-]+', '_', 'g'));
        INSERT INTO {target} (aggregate, routing_key, event_type, body)
        VALUES (agg, rk, rk, jsonb_set(payload, '{{operation}}', '\"status\"')::text);
    END IF;"
                ),
            ),
            None => ("'null'::jsonb".into(), "'null'::jsonb".into(), String::new()),
        };
        let update = if self.events.update { "TRUE" } else { "FALSE" };
        format!(
            "CREATE OR REPLACE FUNCTION {schema}.{name}() RETURNS trigger LANGUAGE plpgsql AS $herald$
DECLARE
    agg text;
    rk text;
    payload jsonb;
BEGIN
    IF TG_OP = 'DELETE' THEN
        agg := '{table}:' || OLD.{key}::text;
        payload := jsonb_build_object('operation', 'delete', 'table', TG_TABLE_NAME, 'id', to_jsonb(OLD.{key}),
            'new', NULL, 'old', to_jsonb(OLD), 'status', NULL, 'old_status', {old_status});
    ELSIF TG_OP = 'INSERT' THEN
        agg := '{table}:' || NEW.{key}::text;
        payload := jsonb_build_object('operation', 'insert', 'table', TG_TABLE_NAME, 'id', to_jsonb(NEW.{key}),
            'new', to_jsonb(NEW), 'old', NULL, 'status', {new_status}, 'old_status', NULL);
    ELSE
        agg := '{table}:' || NEW.{key}::text;
        payload := jsonb_build_object('operation', 'update', 'table', TG_TABLE_NAME, 'id', to_jsonb(NEW.{key}),
            'new', to_jsonb(NEW), 'old', to_jsonb(OLD), 'status', {new_status}, 'old_status', {old_status});
    END IF;
    IF TG_OP <> 'UPDATE' OR {update} THEN
        rk := '{prefix}.' || lower(TG_OP);
        INSERT INTO {target} (aggregate, routing_key, event_type, body) VALUES (agg, rk, rk, payload::text);
    END IF;
    {status_change}
    RETURN NULL;
END
$herald$;
DROP TRIGGER IF EXISTS {name} ON {schema}.{table};
CREATE TRIGGER {name} AFTER {ops} ON {schema}.{table}
    FOR EACH ROW EXECUTE FUNCTION {schema}.{name}();"
        )
    }

    /// Install the trigger (replacing an earlier one). The outbox table must exist.
    pub async fn install<C: GenericClient + Sync>(
        &self,
        client: &C,
        outbox: &PgOutbox,
    ) -> Result<()> {
        client
            .batch_execute(&self.sql(outbox))
            .await
            .map_err(pg("installing the outbox trigger"))?;
        tracing::info!(table = %self.table, "outbox trigger installed");
        Ok(())
    }

    /// Remove the trigger and its function.
    pub async fn uninstall<C: GenericClient + Sync>(&self, client: &C) -> Result<()> {
        let name = self.name();
        client
            .batch_execute(&format!(
                "DROP TRIGGER IF EXISTS {name} ON {}.{}; DROP FUNCTION IF EXISTS {}.{name}();",
                self.schema, self.table, self.schema
            ))
            .await
            .map_err(pg("removing the outbox trigger"))
    }
}
