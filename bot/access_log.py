"""The access log: a line per request, in the log's own format, without a LogRecord each."""
import asyncio
import logging
import sys
import time

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

LOGGER = "aiohttp.access"


class _Lines:
    """Lines written to stderr once per turn of the event loop, whichever connection made them
    (aiohttp makes an access logger per connection)."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._second, self._stamp = -1, ""

    def add(self, text: str) -> None:
        """Queue a line, stamped now; the first of a turn schedules the write."""
        self._lines.append(f"{self._now()} INFO {LOGGER}: {text}\n")
        if len(self._lines) == 1:
            asyncio.get_running_loop().call_soon(self._write)

    def _now(self) -> str:
        """Now as logging.Formatter's asctime writes it (local time, milliseconds)."""
        now = time.time()
        second = int(now)
        if second != self._second:  # strftime once a second, not once a request
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._stamp},{int((now - second) * 1000):03d}"

    def _write(self) -> None:
        lines, self._lines = self._lines, []
        try:
            sys.stderr.write("".join(lines))
            sys.stderr.flush()
        except (OSError, ValueError):  # stderr closed or gone: as logging, never fail a request
            pass


_LINES = _Lines()


class AccessLog(AbstractAccessLogger):
    """`time INFO aiohttp.access: GET /path HTTP/1.1 200 551 0.000412s` per request: logging's
    record, formatter and handler cost a fifth of a small request's time, for the same line."""

    def log(self, request: BaseRequest, response: StreamResponse, time_taken: float) -> None:
        """Queue the request's line."""
        if self.logger.isEnabledFor(logging.INFO):
            version = request.version
            _LINES.add(f"{request.method} {request.path_qs} HTTP/{version.major}.{version.minor} "
                       f"{response.status} {response.body_length} {time_taken:.6f}s")
