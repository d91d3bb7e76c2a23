"""Deployments keep their settings, environment and fork flag; secrets, encrypted."""
import datetime

from peewee import BooleanField, CharField, DateTimeField, Model, TextField


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def up(migrator, db):
    migrator.migrate(
        migrator.add_column("deployment", "settings", TextField(null=True)),
        migrator.add_column("deployment", "environment", CharField(max_length=255, null=True)),
        migrator.add_column("deployment", "fork", BooleanField(default=False)),
    )

    class Secret(Model):
        name = CharField(max_length=128, unique=True)
        value = TextField()
        repositories = TextField()
        branches = TextField()
        pull_requests = BooleanField(default=False)
        created_at = DateTimeField(default=_now)
        updated_at = DateTimeField(default=_now)
        updated_by = CharField(max_length=64)

        class Meta:
            database = db

    db.create_tables([Secret])
