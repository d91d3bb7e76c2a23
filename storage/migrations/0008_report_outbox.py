"""GitHub's outbox: each state a deployment shows on GitHub, recorded by the database itself in
the transaction that changes the deployment, and sent in order by one replica (bot/reporter.py).
And output batches counted, so a batch retried after its commit's answer was lost is stored once
(storage.deployments.append_output).

On SQLite, a later migration that rebuilds the deployment table (peewee does for a NOT NULL
column) drops its triggers: it must make them again (tests/test_outbox.py would fail)."""
from peewee import CharField, DoubleField, IntegerField, Model, PostgresqlDatabase

# The state GitHub is to show for a deployment row (T: NEW or OLD), NULL for none: no commit
# known, not a GitHub repository, or Running before its container started (GitHub still shows
# it queued). The one place this rule is written: bot.reporter.report_of describes each key.
KEY = """CASE
    WHEN {t}."commit" IS NULL OR {t}."commit" = '' OR {t}.repo_full_name IS NULL
         OR {t}.repo_full_name = '' THEN NULL
    WHEN {t}.status = 'Pending' THEN 'queued'
    WHEN {t}.status = 'Running' THEN
        CASE WHEN {t}.container_started_at IS NULL THEN NULL ELSE 'running' END
    WHEN {t}.status = 'Succeeded' THEN 'success'
    WHEN {t}.status = 'Cancelled' THEN 'cancelled'
    WHEN {t}.infrastructure_failure THEN 'error'
    ELSE 'failure' END"""
# Columns the key reads: other updates (output, progress) never look at it.
WATCHED = '"commit", repo_full_name, status, container_started_at, infrastructure_failure'
SQLITE_NOW = "((julianday('now') - 2440587.5) * 86400.0)"

# Each state once per deployment (the unique index): a deployment queued again after an
# interrupted start is still "queued" on GitHub and gets no second one.
SQLITE = [f"""
CREATE TRIGGER speed_report_{event.lower()} AFTER {event}{columns} ON deployment
WHEN ({KEY.format(t="NEW")}) IS NOT NULL
BEGIN
    INSERT OR IGNORE INTO report (deployment_id, key, state, steps, created_at)
    VALUES (NEW.id, {KEY.format(t="NEW")}, 'waiting', 0, {SQLITE_NOW});
END""" for event, columns in (("INSERT", ""), ("UPDATE", f" OF {WATCHED}"))]

POSTGRES = [f"""
CREATE OR REPLACE FUNCTION speed_report() RETURNS trigger AS $$
DECLARE
    k text := {KEY.format(t="NEW")};
BEGIN
    IF k IS NOT NULL THEN
        INSERT INTO report (deployment_id, key, state, steps, created_at)
        VALUES (NEW.id, k, 'waiting', 0, EXTRACT(EPOCH FROM clock_timestamp())::float8)
        ON CONFLICT DO NOTHING;
        IF FOUND THEN
            PERFORM pg_notify('speed_report', NEW.id::text);
        END IF;
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql""", """
CREATE TRIGGER speed_report_insert AFTER INSERT ON deployment
    FOR EACH ROW EXECUTE FUNCTION speed_report()""", f"""
CREATE TRIGGER speed_report_update AFTER UPDATE OF {WATCHED} ON deployment
    FOR EACH ROW EXECUTE FUNCTION speed_report()"""]


def up(migrator, db):
    # Before the triggers: on SQLite this rebuilds the table.
    migrator.migrate(migrator.add_column("deployment", "output_batches", IntegerField(default=0)))

    class Report(Model):
        deployment_id = IntegerField()
        key = CharField(max_length=16)
        # waiting → sending (by sender) → sent; or dropped (a newer state overtook it while
        # GitHub failed), or given_up (GitHub failed for github.report_retry_for; the newest
        # given-up state of a deployment is tried again when a replica takes up the outbox).
        state = CharField(max_length=16, default="waiting")
        sender = CharField(max_length=32, null=True)
        steps = IntegerField(default=0)  # 1: the commit status is on GitHub (the rest follows)
        created_at = DoubleField()  # the database's clock, as the replicas' heartbeats

        class Meta:
            database = db
            table_name = "report"
            indexes = ((("deployment_id", "key"), True), (("state", "id"), False))

    db.create_tables([Report])
    for statement in POSTGRES if isinstance(db, PostgresqlDatabase) else SQLITE:
        db.execute_sql(statement)
    # What the reporter of the release before did not get through to GitHub (deployments
    # of the last day whose state differs from the one recorded as reported) is sent now.
    if isinstance(db, PostgresqlDatabase):
        now, differs = "EXTRACT(EPOCH FROM clock_timestamp())::float8", "IS DISTINCT FROM"
        since = "(now() AT TIME ZONE 'UTC') - interval '1 day'"
    else:
        now, differs, since = SQLITE_NOW, "IS NOT", "datetime('now', '-1 day')"
    key = KEY.format(t="deployment")
    db.execute_sql(f"""
        INSERT INTO report (deployment_id, key, state, steps, created_at)
        SELECT id, {key}, 'waiting', 0, {now} FROM deployment
        WHERE ({key}) IS NOT NULL AND ({key}) {differs} reported
          AND COALESCE(finished_at, created_at) >= {since}""")
