"""storage.statements makes the rows and runs the queries peewee would (tests/test_postgres.py
runs these again on PostgreSQL)."""
import pytest
from peewee import IntegrityError, fn

from storage import statements
from storage.db import open_database
from storage.models import Delivery, Deployment

FIELDS = dict(url="http://127.0.0.1:1/app.git", branch="main", commit="a" * 40,
              repo_full_name="acme/app", trigger="push", installation_id=2**40, pull_request=7,
              environment="production", fork=True)


@pytest.fixture
def db(tmp_path):
    database = open_database(f"sqlite:///{tmp_path / 'speed.db'}")
    with database.connection_context():
        yield database


def _stored(model, row_id: int) -> dict:
    """A row as the database has it, without what differs between two inserts."""
    stored = model.select().where(model._meta.primary_key == row_id).dicts().get()
    return {k: v for k, v in stored.items() if k not in ("id", "created_at", "received_at")}


def test_a_created_row_is_the_one_peewee_would_make(db):
    for values in (FIELDS, dict(url=FIELDS["url"], branch="other")):  # defaults filled alike
        ours, peewees = statements.create(Deployment, **values), Deployment.create(**values)
        assert ours.id is not None and ours.id != peewees.id
        assert _stored(Deployment, ours.id) == _stored(Deployment, peewees.id)
        assert not ours.is_dirty()  # as after peewee's save: nothing left to write
        assert ours.status == "Pending" and ours.created_at is not None
    delivery = statements.create(Delivery, guid="g-1", event="push", deployment=ours, status=202,
                              message="m")
    assert _stored(Delivery, delivery.id) == {"guid": "g-1", "event": "push",
                                              "deployment": ours.id, "status": 202,
                                              "message": "m"}


def test_a_refused_row_raises_as_peewee_does_and_is_not_stored(db):
    statements.create(Delivery, guid="g-1", event="push", status=200, message="m")
    with pytest.raises(IntegrityError):
        statements.create(Delivery, guid="g-1", event="push", status=200, message="again")
    assert [d.message for d in Delivery.select()] == ["m"]


def test_a_statement_runs_with_its_callers_parameters_and_refuses_others(db):
    made = [statements.create(Deployment, url=FIELDS["url"], branch=b) for b in ("a", "b")]

    def ids_of(branch: str) -> list[int]:
        return [i for (i,) in statements.execute(
            "ids of a branch", [branch], lambda: Deployment.select(Deployment.id).where(
                Deployment.branch == branch))]

    assert (ids_of("a"), ids_of("b"), ids_of("c")) == ([made[0].id], [made[1].id], [])
    with pytest.raises(ValueError, match="parameters"):  # not the values its query takes
        statements.execute("ids by url", ["wrong"], lambda: Deployment.select(Deployment.id)
                           .where(Deployment.url == FIELDS["url"]))


def test_a_none_parameter_runs_the_query_peewee_builds_for_it(db):
    # peewee writes `= None` as IS NULL: a cached `= ?` with None would match nothing.
    made = statements.create(Deployment, url=FIELDS["url"], branch="a")

    def without_commit(commit) -> list[int]:
        return [i for (i,) in statements.execute(
            "ids by commit", [commit], lambda: Deployment.select(Deployment.id).where(
                Deployment.commit == commit))]

    assert (without_commit("b" * 40), without_commit(None)) == ([], [made.id])


def test_an_expression_as_a_value_is_written_as_sql(db):
    made = statements.create(Deployment, url=FIELDS["url"], branch=fn.LOWER("MAIN"))
    assert Deployment.get_by_id(made.id).branch == "main"


def test_a_row_read_by_id_is_the_one_peewee_reads(db):
    made = statements.create(Deployment, **FIELDS)
    Deployment.update(progress="p", exit_code=3).where(Deployment.id == made.id).execute()
    ours, peewees = statements.get(Deployment, made.id), Deployment.get_by_id(made.id)
    assert ours.__data__ == peewees.__data__ and not ours.is_dirty()
    assert isinstance(ours.created_at, type(peewees.created_at)) and ours.fork is True
    assert statements.get(Deployment, made.id + 1) is None


def test_rows_read_by_ids_are_the_ones_peewee_reads(db):
    made = [statements.create(Deployment, **FIELDS) for _ in range(3)]
    ids = [row.id for row in made]
    for wanted in (ids[:1], ids, [ids[2], ids[0], ids[2] + 100]):  # one, all, and one missing
        ours = {row.id: row.__data__ for row in statements.many(Deployment, wanted)}
        peewees = {row.id: row.__data__ for row in Deployment.select().where(
            Deployment.id.in_(wanted))}
        assert ours == peewees and set(ours) == set(wanted) & set(ids)
    assert not any(row.is_dirty() for row in statements.many(Deployment, ids))


def test_an_update_writes_and_returns_what_peewee_would(db):
    ours, peewees = (statements.create(Deployment, **FIELDS) for _ in range(2))
    values = dict(status="Running", exit_code=4, reason="r", started_at=ours.created_at)
    changed = statements.update(Deployment, ours.id, values, returning=True)
    expected = list(Deployment.update(**values).where(Deployment.id == peewees.id)
                    .returning(Deployment).objects(Deployment).execute())
    assert [r.__data__ | {"id": 0, "created_at": 0} for r in changed] == [
        r.__data__ | {"id": 0, "created_at": 0} for r in expected]
    assert _stored(Deployment, ours.id) == _stored(Deployment, peewees.id)
    # Only if: a row no longer as the change was decided from is left as it is.
    assert statements.update(Deployment, ours.id, {"status": "Failed"}, {"status": "Pending"},
                             returning=True) == []
    assert Deployment.get_by_id(ours.id).status == "Running"
    # None as a value, and an expression as one, are written as peewee writes them.
    statements.update(Deployment, ours.id, {"reason": None, "attempts": Deployment.attempts + 2})
    assert (Deployment.get_by_id(ours.id).reason, Deployment.get_by_id(ours.id).attempts) == (
        None, ours.attempts + 2)
