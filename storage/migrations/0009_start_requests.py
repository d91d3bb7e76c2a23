"""POST /start remembers its Idempotency-Key for a day: a request sent again (its answer lost)
gets the deployment the first one queued, not a second."""
from peewee import CharField, DoubleField, IntegerField, Model


def up(migrator, db):
    class StartRequest(Model):
        key = CharField(max_length=100, primary_key=True)
        request_hash = CharField(max_length=64)  # sha256 of what was asked: url and branch
        deployment_id = IntegerField()
        created_at = DoubleField(index=True)  # the database's clock

        class Meta:
            database = db
            table_name = "start_request"

    db.create_tables([StartRequest])
