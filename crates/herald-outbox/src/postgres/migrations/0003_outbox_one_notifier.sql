-- One notifying transaction at a time. PostgreSQL commits a transaction that ran NOTIFY under a
-- database-wide lock held through its WAL flush, so when every staging transaction notified,
-- concurrent stagers could not share flushes and committed one at a time. Now a transaction
-- notifies only when no other notifying transaction is in flight: that one's NOTIFY, sent when
-- it commits, wakes the relays, which read until the table is empty and then look again for a
-- short while (see `Relay::run`) to pick up stagers that committed just after it. A stager
-- whose notifier rolled back is found by the next NOTIFY or the relay's poll.
CREATE OR REPLACE FUNCTION {schema}.{table}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_try_advisory_xact_lock(hashtext('herald_outbox_notify'), hashtext('{schema}.{table}')) THEN
        PERFORM pg_notify('{channel}', '');
    END IF;
    RETURN NULL;
END
$$;
