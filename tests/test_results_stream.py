"""GET /results is streamed: the seed's JSON byte for byte, from bounded reads, in flat memory."""
import json
import sqlite3
import time

import pytest
import requests

import bot.api
from bot.keys import store_key
from storage import deployments as queries
from storage.db import database
from storage.models import Result
from tests.conftest import wait_finished
from tests.process import speed_processes
from tests.test_container_limits import memory_kib


def insert_results(deployment_id: int, texts: list[str]) -> None:
    """Results as the runner and callbacks store them, one row per text (on the database thread)."""
    with database.atomic():
        for start in range(0, len(texts), 400):
            Result.insert_many([{"deployment": deployment_id, "text": text}
                                for text in texts[start:start + 400]]).execute()


def hostile_texts() -> list[str]:
    """Thousands of rows of what JSON escapes or keeps, and some past a read's bound."""
    texts = [f"row {i}: \x00\x01\x1b[31m\x1f\x7f\u0085\u2028 é 日本 😀 \"quoted\" "
             "back\\slash \t\r\n" for i in range(5000)]
    texts[1000] = "\x01" * 300_000  # one row past RESULTS_CHARS by itself
    texts[2000:2000] = ["ü" * 100_000] * 5
    return texts


async def test_results_are_the_seeds_json_streamed_from_bounded_reads(client, monkeypatch):
    """Attack: /results built its whole answer in memory, per request: the stored text, then its
    JSON (a control character written as six bytes), then that encoded. Asserts: the answer is
    chunked, byte for byte json.dumps({"results": text}) of 5005 rows with control characters,
    escapes, non-ASCII and astral text, and rows past a read's bound; it was read from the
    database in several queries of at most RESULTS_ROWS rows, none holding more than
    RESULTS_CHARS characters but for its last row; an unknown id is still a JSON 404."""
    reads: list[tuple[int, int]] = []
    read_page = getattr(queries, "results_page", None)

    def counted(*args):
        page = read_page(*args)
        reads.append((len(page), sum(len(text) for _, text in page[:-1])))
        return page

    monkeypatch.setattr(queries, "results_page", counted, raising=False)
    store = client.app[store_key]
    deployment = await store.run(queries.create, "http://127.0.0.1:9/none.git", "main",
                                 status="Succeeded")
    texts = hostile_texts()
    await store.run(insert_results, deployment.id, texts)

    response = await client.get(f"/results/{deployment.id}")
    body = await response.read()
    assert response.status == 200
    assert response.headers["Transfer-Encoding"] == "chunked"
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert body == json.dumps({"results": "".join(texts)}).encode()
    assert len(reads) > 1
    assert max(rows for rows, _ in reads) <= bot.api.RESULTS_ROWS
    assert max(chars for _, chars in reads) < bot.api.RESULTS_CHARS

    missing = await client.get("/results/999999")
    assert missing.status == 404
    assert await missing.json() == {"error": "Deployment not found"}
    empty = await store.run(queries.create, "http://127.0.0.1:9/none.git", "main",
                            status="Succeeded")
    assert await (await client.get(f"/results/{empty.id}")).read() == b'{"results": ""}'


CONTROL_BYTES = 3_300_000
# The sleep: a container that exits right after such a burst can lose its end (a separate
# fault of the output stream, not what this test is about).
FLOOD = f"head -c {CONTROL_BYTES} /dev/zero | tr '\\0' '\\1'\necho\nsleep 1\n"


@pytest.mark.slow
def test_a_large_results_answer_read_slowly_keeps_speeds_memory_flat(tmp_path, docker_client,
                                                                     base_image, repo):
    """Attack: a container printed 3.3 MB of \\x01 bytes; each GET /results of it then built a
    20 MB JSON answer in SPEED's memory. SPEED runs as a real process; a client reads the answer
    16 KiB at a time. Asserts: the body is the JSON of exactly what the database holds (read
    straight from its file), over 19 MB, and SPEED's peak memory (VmHWM) grew by under 4 MiB."""
    with speed_processes(tmp_path, docker_client) as make:
        speed = make()
        url, _ = repo(FLOOD)
        deployment_id = speed.start_deployment(url)
        assert speed.wait_finished(deployment_id, timeout=120)["status"] == "Succeeded"
        with sqlite3.connect(speed.db_path) as db:
            stored = "".join(text for (text,) in db.execute(
                "SELECT text FROM result WHERE deployment_id = ? ORDER BY id", (deployment_id,)))
        assert stored.count("\x01") == CONTROL_BYTES
        small_id = speed.start_deployment("http://127.0.0.1:9/none.git")
        speed.wait_finished(small_id)
        speed.results(small_id)  # warm up on a small answer: the measure is of the large one
        before = memory_kib(speed.process.pid)

        body = bytearray()
        with requests.get(f"{speed.base_url}/results/{deployment_id}", stream=True,
                          timeout=60) as response:
            encoding = response.headers.get("Transfer-Encoding")
            for piece in response.iter_content(16 * 1024):
                body += piece
                time.sleep(0.001)
        after = memory_kib(speed.process.pid)

    assert len(body) > 19_000_000
    assert bytes(body) == json.dumps({"results": stored}).encode()
    growth = (after["VmHWM"] - before["VmHWM"]) * 1024
    print(f"body {len(body)} bytes; SPEED's VmHWM grew by {growth} bytes "
          f"({before['VmHWM']} -> {after['VmHWM']} KiB)")
    assert growth < 4 * 1024 * 1024, f"SPEED's peak memory grew by {growth} bytes"
    assert encoding == "chunked"
