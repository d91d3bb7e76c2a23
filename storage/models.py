"""peewee models: deployments, their results, and instance settings."""
import datetime

from peewee import (
    AutoField, BigIntegerField, CharField, DateTimeField, ForeignKeyField, IntegerField, Model, TextField,
)

from storage.db import database
from storage.status import Status


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


class BaseModel(Model):
    class Meta:
        database = database


class Deployment(BaseModel):
    id = AutoField()
    url = TextField()
    branch = TextField()
    commit = CharField(max_length=40, null=True)
    status = CharField(max_length=16, default=Status.PENDING.value, index=True)
    progress = TextField(null=True)
    trigger = CharField(max_length=32, default="manual")
    token_hash = CharField(max_length=64, null=True)  # sha256 of the running container's token
    container_id = CharField(max_length=64, null=True)
    exit_code = IntegerField(null=True)
    reason = TextField(null=True)
    # Time (Unix ns) of the newest container output stored; a reattached log stream resumes after it.
    log_cursor = BigIntegerField(null=True)
    log_bytes = IntegerField(default=0)
    created_at = DateTimeField(default=utcnow)
    started_at = DateTimeField(null=True)
    container_started_at = DateTimeField(null=True)
    finished_at = DateTimeField(null=True)

    @property
    def state(self) -> Status:
        return Status(self.status)


class Result(BaseModel):
    id = AutoField()
    deployment = ForeignKeyField(Deployment, backref="results", on_delete="CASCADE", index=True)
    text = TextField()
    created_at = DateTimeField(default=utcnow)


class Setting(BaseModel):
    key = CharField(primary_key=True)
    value = TextField()


MODELS = [Deployment, Result, Setting]
