-- Claims as HOT updates. 0001's retention index named `status` in its predicate, and a column in
-- any index's predicate makes every update of that column non-HOT: each claim (pending ->
-- processing) wrote a new entry into every index. Finished rows are told by their times instead,
-- which claiming does not change; retention reads them in the order it deletes them.
-- The index is built inside the migration's transaction, which holds writes to the table until it
-- is done: about a second per million rows kept. On a large table kept with `Retention::Keep`,
-- run the migration in a quiet moment.
DROP INDEX IF EXISTS {schema}.{table}_done;
CREATE INDEX IF NOT EXISTS {table}_finished ON {schema}.{table} ((coalesce(completed_at, sent_at)))
    WHERE sent_at IS NOT NULL OR completed_at IS NOT NULL;
