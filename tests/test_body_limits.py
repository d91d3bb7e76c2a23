"""Huge request bodies (Argo CD ran out of memory on huge webhook bodies) are refused early with a
JSON 413, and the server's memory stays flat."""
import asyncio
import contextlib
import hashlib
import hmac

import aiohttp
import pytest
import requests
import yaml

from tests.conftest import TEST_INSTANCES, free_port
from tests.process import SpeedProcess

pytestmark = pytest.mark.slow

SECRET = "body-limits-secret"
HUGE = 30 * 1024 * 1024  # over GitHub's 25 MB cap and every limit of SPEED's
CHUNK = 64 * 1024
PAUSE_AT = 4 * 1024 * 1024  # past the 1 MiB a body without a length may have
FLAT = 10 * 1024 * 1024  # allowed growth of the server's peak memory, a third of the body


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (peak resident) of a process, in KiB."""
    fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}


@pytest.fixture(scope="module")
def bot(tmp_path_factory, docker_client, base_image):
    """One real SPEED process with a webhook secret, warmed up by one small request of each kind."""
    bot = SpeedProcess(tmp_path_factory.mktemp("speed"), free_port(), free_port())
    config = yaml.safe_load(bot.config_path.read_text())
    config["github"] = {"webhook_secret": SECRET}
    bot.config_path.write_text(yaml.safe_dump(config))
    bot.start()
    TEST_INSTANCES.add(bot.instance)
    # The first request of a kind imports and allocates once; that is not what is measured.
    assert bot.call("POST", "/start", {"url": 1})[0] == 400
    assert requests.post(f"{bot.base_url}/webhook", data=b"{}", headers=webhook_headers(0),
                         timeout=10).status_code == 401
    yield bot
    bot.stop()


def webhook_headers(size: int) -> dict[str, str]:
    """A push delivery's headers, signed over `size` spaces, the body the tests send."""
    digest = hmac.new(SECRET.encode(), b" " * size, hashlib.sha256).hexdigest()
    return {"X-GitHub-Event": "push", "X-GitHub-Delivery": f"huge-{size}",
            "Content-Type": "application/json", "X-Hub-Signature-256": f"sha256={digest}"}


async def post_huge(url: str, headers: dict[str, str]) -> tuple[int, dict, int]:
    """POST HUGE bytes of spaces as a stream: (status, JSON answer, bytes sent when answered)."""
    answered, sent = asyncio.Event(), 0

    async def body():
        nonlocal sent
        while sent < HUGE:
            if sent == PAUSE_AT:
                # Hold the rest back until the answer: a server that needs the whole body to
                # answer gets it after 10 s, and then sent_when_answered shows it was all sent.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(answered.wait(), 10)
            sent += CHUNK
            yield b" " * CHUNK

    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=body(), headers=headers) as response:
            sent_when_answered = sent
            answered.set()
            return response.status, await response.json(), sent_when_answered


async def refused_with_flat_memory(bot: SpeedProcess, path: str, headers: dict[str, str]) -> str:
    """Send a huge body to path; assert a JSON 413 by PAUSE_AT sent and peak memory up < FLAT."""
    before = memory_kib(bot.process.pid)
    status, answer, sent = await post_huge(bot.base_url + path, headers)
    after = memory_kib(bot.process.pid)
    assert status == 413, answer
    assert sent <= PAUSE_AT < HUGE, f"answered only after {sent} of {HUGE} bytes"
    growth = (after["VmHWM"] - before["VmHWM"]) * 1024
    assert growth < FLAT, f"peak memory grew by {growth} bytes: {before} -> {after}"
    assert bot.process.poll() is None
    return answer["error"]


async def test_chunked_huge_webhook_is_refused_early_and_memory_stays_flat(bot):
    """Argo CD OOM: a signed 30 MB webhook sent chunked (no length). Asserts: a JSON 413 naming the
    1 MiB cap before 4 MiB is sent, peak memory up < 10 MiB, the process alive."""
    error = await refused_with_flat_memory(bot, "/webhook", webhook_headers(HUGE))
    assert error == "Request body is larger than 1048576 bytes"


async def test_huge_webhook_with_its_length_is_refused_unread(bot):
    """Argo CD OOM: a signed 30 MB webhook declaring its length. Asserts: a JSON 413 naming the
    25 MiB cap before 4 MiB is sent, peak memory up < 10 MiB, the process alive."""
    headers = {**webhook_headers(HUGE), "Content-Length": str(HUGE)}
    error = await refused_with_flat_memory(bot, "/webhook", headers)
    assert error == f"Request body is larger than {25 * 1024 * 1024} bytes"


async def test_chunked_huge_start_body_is_refused_early_and_memory_stays_flat(bot):
    """Memory exhaustion: a 30 MB /start body sent chunked. Asserts: a JSON 413 naming the 1 MiB cap
    before 4 MiB is sent, peak memory up < 10 MiB, the process alive."""
    error = await refused_with_flat_memory(bot, "/start", {"Content-Type": "application/json"})
    assert error == "Request body is larger than 1048576 bytes"


async def test_huge_start_body_with_its_length_is_refused_unread(bot):
    """Memory exhaustion: a 30 MB /start body declaring its length. Asserts: a JSON 413 naming the
    1 MiB cap before 4 MiB is sent, peak memory up < 10 MiB, the process alive."""
    headers = {"Content-Type": "application/json", "Content-Length": str(HUGE)}
    error = await refused_with_flat_memory(bot, "/start", headers)
    assert error == "Request body is larger than 1048576 bytes"
