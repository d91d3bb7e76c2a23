"""Browser sign-in sessions, kept server-side as hashes."""
import datetime

from peewee import CharField, DateTimeField, Model


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def up(migrator, db):
    class Session(Model):
        cookie_hash = CharField(max_length=64, unique=True)
        token_hash = CharField(max_length=64)
        created_at = DateTimeField(default=_now)
        expires_at = DateTimeField(index=True)

        class Meta:
            database = db

    db.create_tables([Session])
