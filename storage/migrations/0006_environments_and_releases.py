"""Services: environments of a repository, and the releases that serve them."""
import datetime

from peewee import CharField, DateTimeField, ForeignKeyField, IntegerField, Model, TextField


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def up(migrator, db):
    class Deployment(Model):
        class Meta:
            database = db
            table_name = "deployment"

    class Environment(Model):
        repository = TextField()
        name = CharField(max_length=64)
        address = CharField(max_length=200, unique=True)
        live = IntegerField(null=True)
        created_at = DateTimeField(default=_now)
        removed_at = DateTimeField(null=True)

        class Meta:
            database = db
            indexes = ((("repository", "name"), True),)

    class Release(Model):
        environment = ForeignKeyField(Environment, on_delete="CASCADE", index=True)
        deployment = ForeignKeyField(Deployment, on_delete="CASCADE", unique=True)
        image = TextField()
        container_id = CharField(max_length=64, null=True)
        upstream = CharField(max_length=64, null=True)
        state = CharField(max_length=16, index=True)
        health = TextField(null=True)
        started_at = DateTimeField(default=_now)
        live_since = DateTimeField(null=True)
        drain_until = DateTimeField(null=True)
        retired_at = DateTimeField(null=True)

        class Meta:
            database = db

    db.create_tables([Environment, Release])
