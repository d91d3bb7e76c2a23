"""Deployments name their image and count their attempts; finished ones keep no token."""
from peewee import IntegerField, TextField


def up(migrator, db):
    migrator.migrate(
        migrator.add_column("deployment", "image", TextField(null=True)),
        migrator.add_column("deployment", "attempts", IntegerField(default=0)),
    )
    p = db.param
    # A finished deployment's token is refused from now on.
    db.execute_sql("UPDATE deployment SET token_hash = NULL "
                   f"WHERE status IN ({p}, {p}, {p})", ("Succeeded", "Failed", "Cancelled"))
    # Images built before had the one name speed-<instance>:<id>: keep them reusable.
    instance = db.execute_sql(f"SELECT value FROM setting WHERE key = {p}",
                              ("instance_id",)).fetchone()
    if instance:
        db.execute_sql(f"UPDATE deployment SET image = {p} || CAST(id AS TEXT) "
                       "WHERE built_at IS NOT NULL", (f"speed-{instance[0]}:",))
