"""SQLite's WAL is folded into the database by storage/checkpoints.py's thread, not by the
write that happens to pass 1,000 pages (which then waited ~20 ms for the fsync)."""
import os

from storage import deployments as queries
from storage.store import Store
from tests.conftest import wait_for

MEGABYTE = 1024 * 1024


async def test_writes_reach_the_database_file_without_a_writer_checkpointing(tmp_path):
    path = tmp_path / "speed.db"
    store = Store(f"sqlite:///{path}")
    try:
        deployment = await store.run(queries.create, "http://127.0.0.1:1/x.git", "main")
        before = path.stat().st_size
        for n in range(8):  # 8 MB in all: 2,000 pages, twice the default autocheckpoint
            await store.run(queries.append_output, deployment.id, "x" * MEGABYTE, None, None)
        # The writers checkpoint only past 10,000 pages: the file grows by the thread's work.
        async def grown() -> bool:
            return path.stat().st_size - before >= 8 * MEGABYTE

        await wait_for(grown)
    finally:
        store.close()
    # Closed last, the database thread's connection folded the rest in and removed the WAL.
    assert not os.path.exists(f"{path}-wal")
