"""PostgreSQL's announcements (LISTEN), for every replica: deployments queued and finished, and
GitHub reports added to the outbox."""
import logging
import selectors
import threading
from typing import Callable

import psycopg2
from playhouse.db_url import parse

from storage.status import Status

log = logging.getLogger(__name__)

CHANNEL = "speed_deployment"  # as the trigger of migration 0007 sends it
REPORTS = "speed_report"  # migration 0008's, with the deployment's id
RETRY_SECONDS = 1.0

Notice = Callable[[int, Status], None]


class Notices:
    """A thread listening on its own connection; calls notice(id, status) in that thread for
    every deployment queued or finished anywhere, and report() for every GitHub report added
    to the outbox. A lost connection is made again (polling covers what was said meanwhile)."""

    def __init__(self, url: str, notice: Notice, report: Callable[[], None] = lambda: None):
        self._settings = parse(url)
        self._notice = notice
        self._report = report
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="speed-notices", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)

    def _listen(self) -> None:
        while not self._stopping.is_set():
            try:
                self._listen_once()
            except psycopg2.Error as e:
                log.warning("not listening for other replicas' deployments (%s); polling "
                            "meanwhile", str(e).strip().splitlines()[0] if str(e).strip() else e)
                self._stopping.wait(RETRY_SECONDS)
            except Exception:  # noqa: BLE001 - logged: listening again, not a thread gone for good
                log.exception("listening for other replicas' deployments failed; polling "
                              "meanwhile")
                self._stopping.wait(RETRY_SECONDS)

    def _listen_once(self) -> None:
        settings = dict(self._settings)
        connection = psycopg2.connect(dbname=settings.pop("database"), **settings)
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f"LISTEN {CHANNEL}; LISTEN {REPORTS}")
            # Not select.select: SPEED raises its open files limit, and select() cannot wait on
            # a descriptor past 1023 (a ValueError ended this thread: seen in the tests).
            with selectors.DefaultSelector() as waiting:
                waiting.register(connection, selectors.EVENT_READ)
                while not self._stopping.is_set():
                    # Woken at least twice a second to see whether it is to stop.
                    if waiting.select(0.5):
                        self._take(connection)
        finally:
            connection.close()

    def _take(self, connection) -> None:
        """Pass on what the server announced."""
        connection.poll()
        reports = False
        while connection.notifies:
            notice = connection.notifies.pop(0)
            if notice.channel == REPORTS:
                reports = True
            else:
                self._heard(notice.payload)
        if reports:  # one word for a batch: the reporter reads the outbox whole
            self._report()

    def _heard(self, payload: str) -> None:
        deployment_id, _, status = payload.partition(" ")
        try:
            self._notice(int(deployment_id), Status(status))
        except ValueError:
            log.warning("unexpected notice %r", payload)
