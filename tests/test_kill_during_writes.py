"""kill -9 of SPEED while it writes results: every acknowledged write survives, once, intact."""
import collections
import contextlib
import itertools
import sqlite3
import threading

import pytest
import requests

from tests.process import speed_processes

pytestmark = pytest.mark.slow

WRITERS = 16
# The container runs until the test releases it, so its outcome (exit 3) never depends on how
# long the kills and restarts take.
SCRIPT = "echo container-up\nuntil [ -e /tmp/release ]; do sleep 0.1; done\necho released\nexit 3\n"


@pytest.fixture
def speed(tmp_path, docker_client, base_image):
    """make(**runner) starts SPEED as a process; after the test the invariant holds for it."""
    with speed_processes(tmp_path, docker_client) as make:
        yield make


class Writers:
    """Threads that post unique results to SPEED until it goes away, remembering every answer."""

    def __init__(self, bot, deployment_id: int, label: str):
        self.acknowledged: list[str] = []  # answered 2xx: SPEED promised to keep them
        self.unanswered: list[str] = []  # sent, then the connection died: kept or not, never twice
        self.refused: list[tuple[str, int]] = []
        self._threads = [threading.Thread(target=self._write, args=(bot, deployment_id, label, n))
                         for n in range(WRITERS)]
        for thread in self._threads:
            thread.start()

    def _write(self, bot, deployment_id: int, label: str, writer: int) -> None:
        session = requests.Session()  # never retries a POST, so each text is sent at most once
        for n in itertools.count():
            text = f"{label}-w{writer}-{n}"
            # Half the writers use /add_results, half /update with progress text; both append.
            if writer % 2:
                path, body = "/update", {"id": deployment_id, "new_results": text}
            else:
                path, body = f"/add_results/{deployment_id}", {"results": text}
            try:
                response = session.post(bot.base_url + path, json=body, timeout=30)
            except requests.RequestException:
                self.unanswered.append(text)
                return
            if 200 <= response.status_code < 300:
                self.acknowledged.append(text)
            else:
                self.refused.append((text, response.status_code))

    def join(self) -> None:
        for thread in self._threads:
            thread.join(timeout=60)
            assert not thread.is_alive(), "a writer still runs after SPEED was killed"


def stored_lines(db_path, deployment_id: int) -> collections.Counter:
    """How often each line is in the deployment's results, read straight from the database file."""
    with contextlib.closing(sqlite3.connect(db_path, timeout=10)) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        texts = db.execute("SELECT text FROM result WHERE deployment_id = ? ORDER BY id",
                           (deployment_id,)).fetchall()
    return collections.Counter("".join(text for (text,) in texts).splitlines())


@pytest.mark.parametrize("kill_after", [1, 100, 400])
def test_kill_during_concurrent_result_writes_keeps_each_acknowledged_one_once(
        speed, repo, docker_client, kill_after):
    """Fault: kill -9 x3 amid 16 threads posting /add_results and /update, the last racing the exit.
    Asserts: each 2xx text on disk once at each kill and at the end; Failed, exit 3."""
    bot = speed()
    url, _ = repo(SCRIPT)
    deployment_id = bot.start_deployment(url)
    bot.wait_output(deployment_id, "container-up\n")
    acknowledged, unanswered = [], []
    for round_ in range(3):
        if round_ == 2:
            # The last kill races the container's exit and SPEED recording it.
            container = bot.row(deployment_id)["container_id"]
            exec_id = docker_client.api.exec_create(container, ["touch", "/tmp/release"])["Id"]
            docker_client.api.exec_start(exec_id)
        writers = Writers(bot, deployment_id, f"round{round_}")
        bot.wait_until(lambda: len(writers.acknowledged) >= kill_after or writers.refused)
        bot.kill9()
        writers.join()
        assert writers.refused == []
        acknowledged += writers.acknowledged
        unanswered += writers.unanswered
        # Committed before the reply: the file the killed process left already holds every 2xx.
        lines = stored_lines(bot.db_path, deployment_id)
        assert [text for text in writers.acknowledged if lines[text] != 1] == []
        bot.start()
    info = bot.wait_finished(deployment_id)
    lines = stored_lines(bot.db_path, deployment_id)
    assert (info["status"], info["exit_code"]) == ("Failed", 3), info
    assert len(acknowledged) >= 3 * kill_after
    assert [text for text in acknowledged if lines[text] != 1] == []
    assert [text for text in unanswered if lines[text] > 1] == []
    assert (lines["container-up"], lines["released"]) == (1, 1)
