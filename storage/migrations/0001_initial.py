"""The schema of SPEED's first release, frozen: what every later migration starts from."""
import datetime

from peewee import (AutoField, BigIntegerField, BooleanField, CharField, DateTimeField,
                    ForeignKeyField, IntegerField, Model, TextField)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def up(migrator, db):
    class Base(Model):
        class Meta:
            database = db

    class Deployment(Base):
        id = AutoField()
        url = TextField()
        branch = TextField()
        commit = CharField(max_length=40, null=True)
        status = CharField(max_length=16, default="Pending", index=True)
        progress = TextField(null=True)
        trigger = CharField(max_length=32, default="manual")
        repo_full_name = CharField(max_length=200, null=True, index=True)
        installation_id = BigIntegerField(null=True)
        pull_request = IntegerField(null=True)
        github_deployment_id = BigIntegerField(null=True)
        reported = CharField(max_length=32, null=True)
        token_hash = CharField(max_length=64, null=True)
        container_id = CharField(max_length=64, null=True)
        exit_code = IntegerField(null=True)
        reason = TextField(null=True)
        infrastructure_failure = BooleanField(default=False)
        log_cursor = BigIntegerField(null=True)
        log_bytes = IntegerField(default=0)
        created_at = DateTimeField(default=_now)
        started_at = DateTimeField(null=True)
        cloned_at = DateTimeField(null=True)
        built_at = DateTimeField(null=True)
        container_started_at = DateTimeField(null=True)
        finished_at = DateTimeField(null=True)

    class Result(Base):
        id = AutoField()
        deployment = ForeignKeyField(Deployment, on_delete="CASCADE", index=True)
        text = TextField()
        created_at = DateTimeField(default=_now)

    class Delivery(Base):
        guid = CharField(max_length=64, unique=True)
        event = CharField(max_length=64)
        deployment = ForeignKeyField(Deployment, null=True, on_delete="SET NULL")
        status = IntegerField()
        message = TextField()
        received_at = DateTimeField(default=_now)

    class Setting(Base):
        key = CharField(primary_key=True)
        value = TextField()

    db.create_tables([Deployment, Result, Delivery, Setting])
