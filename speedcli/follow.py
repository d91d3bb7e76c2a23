"""Follow a deployment live: its log on stdout, its phase on stderr, its outcome as exit code."""
import contextlib
import json
import queue
import sys
import threading
from typing import TextIO

from speedcli.api import Api
from speedcli.errors import CliError, exit_code
from speedcli.progress import Progress
from speedcli.safe import LogText
from speedcli.sse import Event
from speedcli.stream import deployment_events

# How often a terminal's progress line refreshes its elapsed time.
TICK_SECONDS = 0.2


def _pump(api: Api, deployment_id: int, events: queue.Queue) -> None:
    # Reading blocks, so it runs here while the main thread keeps the progress line ticking.
    try:
        for event in deployment_events(api, deployment_id):
            events.put(event)
    except BaseException as e:  # noqa: BLE001 - handed over, the main thread reports it
        events.put(e)


def _decoded(event: Event, kind: type):
    try:
        value = json.loads(event.data)
    except ValueError:
        value = None
    if not isinstance(value, kind):
        raise CliError(f"unexpected {event.kind} event from SPEED: {event.data[:80]!r}")
    return value


def _waiting_reason(api: Api, deployment_id: int) -> str | None:
    # The event stream's status leaves waiting_reason empty; /info knows it.
    try:
        return api.get(f"/info/{deployment_id}").get("waiting_reason")
    except (CliError, AttributeError):
        return None


def follow(api: Api, deployment_id: int, out: TextIO = sys.stdout,
           err: TextIO = sys.stderr) -> int:
    """Stream until the deployment finished; 0 Succeeded, 1 Failed, 2 Cancelled."""
    events: queue.Queue = queue.Queue()
    threading.Thread(target=_pump, args=(api, deployment_id, events), daemon=True,
                     name="speed-events").start()
    progress = Progress(err, deployment_id, live=err.isatty())
    # Log text and the progress line share the screen only when both go to a terminal.
    shared = progress.live and out.isatty()
    # Pieces of log text, escaped; a sequence split between two pieces is judged whole.
    logs = LogText(terminal=out.isatty())
    at_line_start = True
    try:
        while True:
            try:
                item = events.get(timeout=TICK_SECONDS if progress.live else None)
            except queue.Empty:
                progress.tick()
                continue
            if isinstance(item, BaseException):
                raise item
            if item.kind == "log":
                text = logs.feed(_decoded(item, str))
                at_line_start = text.endswith("\n") if text else at_line_start
                if shared:
                    progress.hide()
                    # The progress line must not be drawn in a colour the log left on.
                    text += logs.reset() if at_line_start else ""
                out.write(text)
                out.flush()
                if shared and at_line_start:
                    progress.show()
            elif item.kind == "status":
                status = _decoded(item, dict)
                if status.get("status") == "Pending" and not status.get("waiting_reason"):
                    status["waiting_reason"] = _waiting_reason(api, deployment_id)
                progress.update(status)
            elif item.kind == "end":
                final = str(_decoded(item, dict).get("status"))
                rest = logs.flush()
                at_line_start = rest.endswith("\n") if rest else at_line_start
                out.write(rest + logs.reset() + ("\n" if shared and not at_line_start else ""))
                out.flush()
                progress.finish(final)
                return exit_code(final)
    finally:
        progress.clear()
        if reset := logs.reset():  # interrupted inside a colour: the error line must not be in it
            with contextlib.suppress(OSError, ValueError):
                out.write(reset)
                out.flush()
