"""A deployment's phase on stderr: redrawn in place on a terminal, else one line per change."""
import datetime
import os
from typing import TextIO

from speedcli import render
from speedcli.safe import field

FINISHED = ("Succeeded", "Failed", "Cancelled")


def phase_of(status: dict) -> str:
    """queued, cloning (rolling back: a rollback clones nothing), building or running; the
    status itself once finished."""
    state, phases = status.get("status"), status.get("phases") or {}
    if state == "Pending":
        return "queued"
    if state == "Running":
        if phases.get("clone") is None:
            return "rolling back" if status.get("trigger") == "rollback" else "cloning"
        return "building" if phases.get("build") is None else "running"
    return str(state)


def elapsed(status: dict) -> float | None:
    """Seconds since the deployment was queued, until it finished or until now."""
    created = render.moment(status.get("created_at"))
    if created is None:
        return None
    end = render.moment(status.get("finished_at")) or datetime.datetime.now(datetime.UTC)
    return max(0.0, (end - created).total_seconds())


class Progress:
    """Shows where one deployment is; `live` (a terminal) redraws a single line in place."""

    def __init__(self, stream: TextIO, deployment_id: int, live: bool):
        self.stream, self.deployment_id, self.live = stream, deployment_id, live
        self.status: dict | None = None
        self.phase: str | None = None
        self.drawn = 0
        self.hidden = False

    def update(self, status: dict) -> None:
        """A new status event."""
        self.status, changed = status, phase_of(status) != self.phase
        self.phase = phase_of(status)
        if self.live:
            self._draw()
        elif changed and self.phase not in FINISHED:
            self._write(self._text() + "\n")

    def tick(self) -> None:
        """Time passed: refresh the elapsed time on a terminal."""
        if self.live:
            self._draw()

    def hide(self) -> None:
        """Take the line off the screen until show(), so output can be written there."""
        self.clear()
        self.hidden = True

    def show(self) -> None:
        self.hidden = False
        self.tick()

    def finish(self, final: str) -> None:
        """The last line: the outcome, how long it took from being queued, and why."""
        self.clear()
        status = self.status or {}
        took = elapsed(status) if status.get("status") == final else None
        line = f"speed: deployment {self.deployment_id} {final}"
        line += f" after {render.duration(took)}" if took is not None else ""
        line += f" ({status['reason']})" if status.get("reason") else ""
        self._write(field(line) + "\n")  # the status and reason come from the server

    def clear(self) -> None:
        if self.drawn:
            self._write("\r" + " " * self.drawn + "\r")
            self.drawn = 0

    def _text(self) -> str:
        """The phase line, escaped: the phase (a status) and waiting_reason come from the server."""
        status = self.status or {}
        text = (f"speed: deployment {self.deployment_id} {self.phase} "
                f"({render.duration(elapsed(status))})")
        if self.phase == "queued" and status.get("waiting_reason"):
            text += f": {status['waiting_reason']}"
        return field(text)

    def _draw(self) -> None:
        if self.hidden or self.status is None:
            return
        text = self._text()[:self._columns() - 1]
        self._write("\r" + text + " " * max(0, self.drawn - len(text)))
        self.drawn = len(text)

    def _columns(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns or 80
        except (OSError, ValueError, AttributeError):
            return 80

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
