"""SPEED served as main.py serves it, for tests the test client's server would change."""
import contextlib
from typing import AsyncIterator

from aiohttp import web

from bot.app import create_app
from bot.config import Config
from bot.keys import worker_key
from tests.conftest import TEST_INSTANCES


@contextlib.asynccontextmanager
async def serving(config: Config, host: str, port: int) -> AsyncIterator[web.AppRunner]:
    """The app on host:port through web.AppRunner, like run_app: unlike the test client's server
    it binds where it is told and does not cancel a handler whose client leaves."""
    runner = web.AppRunner(create_app(config))
    await runner.setup()
    TEST_INSTANCES.add(runner.app[worker_key].pipeline.settings.instance)
    try:
        await web.TCPSite(runner, host, port).start()
        yield runner
    finally:
        await runner.cleanup()
