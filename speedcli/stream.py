"""A deployment's events, reconnecting after a dropped connection where the log left off."""
import http.client
import time
from typing import Iterator

from speedcli import sse
from speedcli.api import Api, reason
from speedcli.errors import CliError, HttpError, Unreachable

# Waits before each reconnection; as many tries as delays, counted since the last event.
RETRY_DELAYS = (0.25, 0.5, 1.0, 2.0, 4.0)


def deployment_events(api: Api, deployment_id: int) -> Iterator[sse.Event]:
    """Every event until `end`; the first connection's failure is raised at once."""
    path = f"/deployments/{deployment_id}/events"
    after, failures = None, 0
    response = api.stream(path)
    while True:
        try:
            with response:
                for event in sse.parse(response):
                    failures = 0
                    if event.kind == "log" and event.id:
                        after = event.id
                    yield event
                    if event.kind == "end":
                        return
            problem = "the event stream ended before the deployment did"
        except (OSError, http.client.HTTPException) as e:
            problem = reason(e)
        while True:
            if failures == len(RETRY_DELAYS):
                raise CliError(f"lost the connection to SPEED at {api.base_url} "
                               f"({failures} reconnection attempts): {problem}")
            time.sleep(RETRY_DELAYS[failures])
            failures += 1
            try:
                response = api.stream(path, {"after": after})
                break
            except HttpError as e:
                if e.status < 500:
                    raise
                problem = str(e)
            except Unreachable as e:
                problem = e.why
