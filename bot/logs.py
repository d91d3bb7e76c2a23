"""Structured logging: one line per event, with the deployment id when there is one.

On the event loop, lines are written to stderr once per turn of the loop: a write and a flush
per line cost a tenth of a webhook delivery's time on the loop."""
import asyncio
import atexit
import logging
import sys
import threading
import time


class _Lines:
    """Lines made during one turn of the event loop, written together at its end; a line
    written at once (from another thread, or a warning) takes those before it along."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        # The loop queues, other threads write. Reentrant: a garbage collection while it is
        # held may free a future whose exception nobody read, and asyncio logs that on this
        # very thread (a plain lock hung the loop for ever). Nothing under it makes an object
        # the collector tracks, but stderr may be Python code (a test's capture) that does.
        self._lock = threading.RLock()
        self._waiting: asyncio.AbstractEventLoop | None = None  # the loop a write is due on
        self._second = (-1, "")  # (whole second, its text): one tuple, so threads read it whole

    def add(self, line: str) -> bool:
        """Queue a whole line (newline included) until the end of the loop's turn; False, and
        nothing queued, on a thread without a running loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        with self._lock:
            self._lines.append(line)
            # Due on this loop unless one is already: a loop closed with a write still due
            # (another asyncio.run before it) must not hold the lines back for ever.
            due = self._waiting is not loop
            if due:
                self._waiting = loop
        if due:  # outside the lock: call_soon makes a handle, and so may start a collection
            loop.call_soon(self.write)
        return True

    def stamp(self, now: float) -> str:
        """now as logging's asctime writes it (local time, milliseconds)."""
        second, text = self._second
        if int(now) != second:  # strftime once a second, not once a line
            second = int(now)
            text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._second = (second, text)
        return f"{text},{int((now - second) * 1000):03d}"

    def write(self, line: str = "") -> None:
        """Write what is queued, and line after it (at the turn's end; at once from a thread;
        at exit, for a loop closed before its turn ended)."""
        empty: list[str] = []  # made before the lock, as add() explains
        with self._lock:
            lines, self._lines, self._waiting = self._lines, empty, None
            if line:
                lines.append(line)
            if not lines:
                return
            try:
                sys.stderr.write("".join(lines))
                sys.stderr.flush()
            except (OSError, ValueError):  # stderr closed or gone: as logging, never fail
                pass


LINES = _Lines()


class _Formatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return LINES.stamp(record.created)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        deployment = getattr(record, "deployment", None)
        return f"{line} deployment={deployment}" if deployment is not None else line


class _Handler(logging.Handler):
    """stderr: at the end of the loop's turn for a line below WARNING made on the event loop,
    at once for any other (a warning is what someone looks for when the loop hangs)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
            # Not on a loop: a thread of its own (the database's, a stream's).
            if record.levelno >= logging.WARNING or not LINES.add(line):
                LINES.write(line)
        except Exception:  # noqa: BLE001 - as logging does: a bad record never fails the caller
            self.handleError(record)


def configure_logging(level: int = logging.INFO) -> None:
    """Log to stderr as `time level logger: message [deployment=N]`."""
    handler = _Handler()
    handler.setFormatter(_Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The line names no source file: logging need not look it up for every record (as its
    # documentation suggests, under Optimization).
    logging._srcfile = None
    atexit.register(LINES.write)
