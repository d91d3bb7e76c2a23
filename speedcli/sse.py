"""Server-Sent Events: the `event`, `data` and `id` fields of a text/event-stream."""
import dataclasses
from typing import Iterable, Iterator


@dataclasses.dataclass(frozen=True)
class Event:
    kind: str
    data: str
    id: str | None = None


def parse(lines: Iterable[bytes]) -> Iterator[Event]:
    """The events of a stream, each yielded once its terminating blank line arrived."""
    kind, data, event_id = "message", [], None
    for raw in lines:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if data:
                yield Event(kind, "\n".join(data), event_id)
            kind, data, event_id = "message", [], None
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            kind = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value
