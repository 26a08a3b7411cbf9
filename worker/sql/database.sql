-- Queries about the database as a whole rather than one table: notifications, its clock and the migration
-- bookkeeping. Keep each block's "-- name: why" to one line: a further comment line would open the statement
-- text, which is what pg_stat_activity shows (and a test looks for 'LISTEN%' there).
-- Migrations run one per transaction, all under the one-key advisory lock {lock:migration} (protocol.MIGRATION_LOCK).

-- channel_listen: receive a channel's notifications ({channel}: a protocol name; LISTEN takes no parameter).
LISTEN {channel};

-- clock_now: the database's clock, so processes on hosts with skewed clocks agree on what is due.
SELECT clock_timestamp() AS now;

-- migration_lock: serialise concurrent `kubetasks migrate` runs; held by the session across all migrations.
SELECT pg_advisory_lock({lock:migration});

-- migration_unlock: let the next `kubetasks migrate` in, once this one applied (or failed) everything.
SELECT pg_advisory_unlock({lock:migration});

-- migration_schema_create: the schema the bookkeeping table lives in, before the first migration makes the rest.
CREATE SCHEMA IF NOT EXISTS kubetasks;

-- migration_table_create: the bookkeeping table, one row per applied migration (also in schema.sql).
CREATE TABLE IF NOT EXISTS kubetasks.schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- migration_table_exists: whether any migration ever ran here (to_regclass is NULL for a missing table).
SELECT to_regclass('kubetasks.schema_migrations') IS NOT NULL AS e;

-- migration_list: the versions already applied.
SELECT version FROM kubetasks.schema_migrations;

-- migration_record: note a migration as applied, in the transaction that applied it.
INSERT INTO kubetasks.schema_migrations (version, name) VALUES (%(version)s, %(name)s);
