"""Structured logging: one line per event, with the deployment id when there is one.

On the event loop, lines are written to stderr once per turn of the loop: a write and a flush
per line cost a tenth of a webhook delivery's time on the loop."""
import asyncio
import atexit
import logging
import sys
import time


class _Lines:
    """Lines made during one turn of the event loop, written together at its end."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._second = (-1, "")  # (whole second, its text): one tuple, so threads read it whole

    def add(self, line: str) -> None:
        """Queue a whole line (newline included); the first of a turn schedules the write."""
        self._lines.append(line)
        if len(self._lines) == 1:
            asyncio.get_running_loop().call_soon(self.write)

    def stamp(self, now: float) -> str:
        """now as logging's asctime writes it (local time, milliseconds)."""
        second, text = self._second
        if int(now) != second:  # strftime once a second, not once a line
            second = int(now)
            text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._second = (second, text)
        return f"{text},{int((now - second) * 1000):03d}"

    def write(self) -> None:
        """Write what is queued (at the turn's end; at exit, for a loop closed before it)."""
        lines, self._lines = self._lines, []
        if not lines:
            return
        try:
            sys.stderr.write("".join(lines))
            sys.stderr.flush()
        except (OSError, ValueError):  # stderr closed or gone: as logging, never fail a request
            pass


LINES = _Lines()


class _Formatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return LINES.stamp(record.created)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        deployment = getattr(record, "deployment", None)
        return f"{line} deployment={deployment}" if deployment is not None else line


class _Handler(logging.StreamHandler):
    """stderr: at the end of the loop's turn on the event loop, at once on other threads."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # a thread of its own (the database's, a stream's): write now
            super().emit(record)
            return
        try:
            LINES.add(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - as logging does: a bad record never fails the caller
            self.handleError(record)


def configure_logging(level: int = logging.INFO) -> None:
    """Log to stderr as `time level logger: message [deployment=N]`."""
    handler = _Handler(sys.stderr)
    handler.setFormatter(_Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The line names no source file, thread or process: logging need not look them up (as
    # logging's documentation suggests, under Optimization).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    atexit.register(LINES.write)
