"""Replicas: each running SPEED has a row and a heartbeat; a deployment names the one running it;
on PostgreSQL, queued and finished deployments are announced to every replica."""
import datetime

from peewee import CharField, DateTimeField, DoubleField, IntegerField, Model, PostgresqlDatabase

# PostgreSQL tells every listening replica when a deployment is queued or finished (the channel
# and payload storage.notices reads), whatever query made the change.
NOTIFY = """
CREATE OR REPLACE FUNCTION speed_deployment_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('speed_deployment', NEW.id || ' ' || NEW.status);
    RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER speed_deployment_notify AFTER INSERT OR UPDATE OF status ON deployment
    FOR EACH ROW WHEN (NEW.status <> 'Running') EXECUTE FUNCTION speed_deployment_notify();
"""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def up(migrator, db):
    class Replica(Model):
        id = CharField(max_length=32, primary_key=True)
        host = CharField(max_length=200)
        pid = IntegerField()
        slots = IntegerField(default=0)
        started_at = DateTimeField(default=_now)
        heartbeat = DoubleField()

        class Meta:
            database = db

    db.create_tables([Replica])
    # Deployments Running before this release have no owner: the first replica to start adopts
    # them (storage.replicas.adopt), as the one process used to at every start.
    migrator.migrate(
        migrator.add_column("deployment", "owner", CharField(max_length=32, null=True)),
        migrator.add_column("deployment", "claim", IntegerField(default=0)),
        migrator.add_index("deployment", ("owner",), False),
    )
    if isinstance(db, PostgresqlDatabase):
        db.execute_sql(NOTIFY)
