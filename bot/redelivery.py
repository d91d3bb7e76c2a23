"""After downtime: ask GitHub to redeliver the App's webhook deliveries SPEED never recorded."""
import logging

from bot.github import GitHub
from storage import deployments as queries
from storage.store import Store

log = logging.getLogger(__name__)

# GitHub lists the newest deliveries first; one page covers any ordinary outage.
PAGE = 100


async def redeliver_missed(github: GitHub, store: Store) -> list[int]:
    """Request redelivery of each missed delivery (its newest attempt); return their ids."""
    jwt = github.jwt()
    listed = await github.api.getitem(f"/app/hook/deliveries?per_page={PAGE}", jwt=jwt)
    newest: dict[str, dict] = {}
    for delivery in listed:
        newest.setdefault(delivery["guid"], delivery)
    known = await store.run(queries.known_deliveries, list(newest))
    missed = [d for guid, d in newest.items() if guid not in known]
    for delivery in missed:
        await github.api.post(f"/app/hook/deliveries/{delivery['id']}/attempts", data=b"", jwt=jwt)
        log.info("asked GitHub to redeliver %s (%s, answered %s)", delivery["guid"],
                 delivery.get("event"), delivery.get("status_code"))
    return [d["id"] for d in missed]
