"""Statements on every request's path with their SQL built once, not by peewee each time: for
a 40-column INSERT or a six-term SELECT that took 20 times what SQLite took to run it."""
from typing import Callable, Hashable, TypeVar

from peewee import Field, Model, Node, Query

from storage.db import database

M = TypeVar("M", bound=Model)

# By model, database class and the columns set: the INSERT's SQL and its fields in order, or
# None where peewee's own parameters did not come out as these would (then peewee inserts).
_COMPILED: dict[tuple, tuple[str, tuple[Field, ...]] | None] = {}


def create(model: type[M], **values) -> M:
    """model.create(**values): the same row (defaults filled by the model), the same SQL."""
    row = model(**values)
    data = row.__data__
    # An expression as a value (fn.NOW()) is SQL of its own, not a parameter: peewee's to write.
    if any(isinstance(value, Node) for value in data.values()):
        row.save(force_insert=True)
        return row
    key = (model, type(database.obj), tuple(data))
    if key not in _COMPILED:
        _COMPILED[key] = _compile(model, data)
    compiled = _COMPILED[key]
    if compiled is None:
        row.save(force_insert=True)
        return row
    sql, fields = compiled
    cursor = database.execute_sql(sql, [field.db_value(data[field.name]) for field in fields])
    # Read to the end: SQLite commits an INSERT ... RETURNING outside a transaction only when
    # the statement finishes, and a failed COMMIT (a full disk) must fail here, not later.
    ((row._pk,),) = cursor.fetchall()
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


# By key and database class: the SQL of a query whose parameters are those its caller gives.
_SQL: dict[tuple, str] = {}


def execute(key: Hashable, params: list, build: Callable[[], Query]):
    """The cursor of build()'s query, run with params: its SQL built once per key (so one
    shape of query per key), and only if params are the parameters peewee gives it."""
    if any(param is None for param in params):  # peewee writes `= None` as IS NULL: its shape
        return database.execute(build())
    cached = (key, type(database.obj))
    sql = _SQL.get(cached)
    if sql is None:
        sql, built = build().sql()
        if list(built) != list(params):
            raise ValueError(f"statement {key!r}: its parameters are {built}, not {params}")
        _SQL[cached] = sql
    return database.execute_sql(sql, params)


def update(model: type[M], row_id: int, values: dict, only_if: dict | None = None,
           returning: bool = False):
    """model.update(**values).where(its primary key == row_id, each only_if field == its
    value), returning the rows as changed if asked (else the cursor): built once per shape."""
    meta, only_if = model._meta, only_if or {}

    def build():
        query = model.update(**values).where(meta.primary_key == row_id, *(
            meta.fields[name] == value for name, value in only_if.items()))
        return query.returning(model) if returning else query

    # An expression as a value (Model.count + 1) is SQL of its own, not a parameter.
    if any(isinstance(value, Node) for value in values.values()):
        cursor = database.execute(build())
    else:
        fields = sorted((meta.fields[name] for name in values), key=lambda f: f._sort_key)
        params = [field.db_value(values[field.name]) for field in fields]
        params.append(meta.primary_key.db_value(row_id))
        params += [meta.fields[name].db_value(value) for name, value in only_if.items()]
        cursor = execute((model, "update", tuple(values), tuple(only_if), returning), params,
                         build)
    return instances(model, cursor) if returning else cursor


def get(model: type[M], row_id: int) -> M | None:
    """model.get_or_none(its primary key == row_id): the same instance, the SELECT built once."""
    key = model._meta.primary_key
    cursor = execute((model, "by primary key"), [key.db_value(row_id)],
                     lambda: model.select().where(key == row_id))
    rows = instances(model, cursor)
    return rows[0] if rows else None


def many(model: type[M], row_ids: list[int]) -> list[M]:
    """model.select().where(its primary key in row_ids): the SELECT built once per number of ids."""
    key = model._meta.primary_key
    return instances(model, execute((model, "by primary keys", len(row_ids)),
                                     [key.db_value(row_id) for row_id in row_ids],
                                     lambda: model.select().where(key.in_(row_ids))))


def instances(model: type[M], cursor) -> list[M]:
    """The cursor's rows as peewee makes a row's instance: values converted, no defaults,
    nothing to save."""
    rows = cursor.fetchall()  # to the end: an unfinished SELECT holds SQLite's read snapshot
    if not rows:
        return []
    fields = model._meta.sorted_fields
    if [column[0] for column in cursor.description] != [f.column_name for f in fields]:
        raise ValueError(f"{model.__name__}: the SELECT's columns are not its fields")
    made = []
    for values in rows:
        row = model(__no_default__=1, **{f.name: f.python_value(v) for f, v in zip(fields, values)})
        row._dirty.clear()
        made.append(row)
    return made
