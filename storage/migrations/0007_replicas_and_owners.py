"""Replicas: each running SPEED has a row and a heartbeat; a deployment names the one running it."""
import datetime

from peewee import CharField, DateTimeField, DoubleField, IntegerField, Model


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def up(migrator, db):
    class Replica(Model):
        id = CharField(max_length=32, primary_key=True)
        host = CharField(max_length=200)
        pid = IntegerField()
        started_at = DateTimeField(default=_now)
        heartbeat = DoubleField()

        class Meta:
            database = db

    db.create_tables([Replica])
    # Deployments Running before this release have no owner: the first replica to start adopts
    # them (storage.replicas.adopt), as the one process used to at every start.
    migrator.migrate(
        migrator.add_column("deployment", "owner", CharField(max_length=32, null=True)),
        migrator.add_index("deployment", ("owner",), False),
    )
