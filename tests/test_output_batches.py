"""A batch of output is stored once even when its write is sent again: the commit went through
but its answer was lost with the connection, and the patient store retried the same batch. On
SQLite here; tests/test_postgres.py runs it again on PostgreSQL."""
import pytest

from storage import deployments as queries
from storage.db import open_database


@pytest.fixture
def db(tmp_path):
    database = open_database(f"sqlite:///{tmp_path / 'speed.db'}")
    with database.connection_context():
        yield database


def test_a_batch_sent_again_is_stored_once_and_the_next_goes_on(db):
    deployment = queries.create("https://example.com/app.git", "main")
    queries.claim_next("r1")
    assert queries.append_output(deployment.id, "one\n", (10, 1), 100, batch=0) == (4, 0)
    queries.add_result(deployment.id, "called back", limit=100)  # a callback between batches
    assert queries.append_output(deployment.id, "one\n", (10, 1), 100, batch=0) == (16, 0)
    assert queries.append_output(deployment.id, "two\n", (20, 1), 100, batch=1) == (20, 0)
    stored = queries.get(deployment.id)
    assert (stored.output_batches, stored.log_cursor) == (2, 20)
    assert queries.results_text(deployment.id) == "one\ncalled back\ntwo\n"
