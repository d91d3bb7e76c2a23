"""The access log writes one line per request, in the log's format, once the request is done."""
import logging
import re

import aiohttp
from aiohttp import web

from bot.access_log import AccessLog
from tests.conftest import free_port

LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO aiohttp\.access: "
                  r"(?P<request>.+) (?P<status>\d{3}) (?P<size>\d+) \d+\.\d{6}s")


async def test_each_request_is_one_line_with_its_request_status_and_size(capfd):
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="hello", status=201)

    app = web.Application()
    app.router.add_post("/x", handler)
    logging.getLogger("aiohttp.access").setLevel(logging.INFO)
    runner = web.AppRunner(app, access_log_class=AccessLog)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as session:
            for n in range(3):
                async with session.post(f"http://127.0.0.1:{port}/x?n={n}") as response:
                    assert response.status == 201
    finally:
        await runner.cleanup()
    lines = [LINE.fullmatch(line) for line in capfd.readouterr().err.splitlines()]
    assert [(m["request"], m["status"]) for m in lines if m] == [
        (f"POST /x?n={n} HTTP/1.1", "201") for n in range(3)]
    # As aiohttp's own access log counts it: the headers and the 5 bytes of body.
    assert all(int(m["size"]) > 5 for m in lines if m)
