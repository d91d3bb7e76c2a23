"""Model.create for the rows every request adds (deployments, deliveries), without peewee
building the same INSERT anew each time: for a 40-column row that took more than half of a
webhook's time on the database thread."""
from typing import TypeVar

from peewee import Field, Model

from storage.db import database

M = TypeVar("M", bound=Model)

# By model, database class and the columns set: the INSERT's SQL and its fields in order, or
# None where peewee's own parameters did not come out as these would (then peewee inserts).
_COMPILED: dict[tuple, tuple[str, tuple[Field, ...]] | None] = {}


def create(model: type[M], **values) -> M:
    """model.create(**values): the same row (defaults filled by the model), the same SQL."""
    row = model(**values)
    data = row.__data__
    key = (model, type(database.obj), tuple(data))
    if key not in _COMPILED:
        _COMPILED[key] = _compile(model, data)
    compiled = _COMPILED[key]
    if compiled is None:
        row.save(force_insert=True)
        return row
    sql, fields = compiled
    cursor = database.execute_sql(sql, [field.db_value(data[field.name]) for field in fields])
    row._pk = cursor.fetchone()[0]
    row._dirty.clear()
    return row


def _compile(model: type[Model], data: dict) -> tuple[str, tuple[Field, ...]] | None:
    """The INSERT peewee builds for data, returning the primary key, and the fields whose
    values its parameters are, in order; None unless they are the values this row gives."""
    fields = tuple(sorted((model._meta.fields[name] for name in data), key=lambda f: f._sort_key))
    sql, params = model.insert(data).returning(model._meta.primary_key).sql()
    if list(params) != [field.db_value(data[field.name]) for field in fields]:
        return None
    return sql, fields
