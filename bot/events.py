"""Live deployments: Server-Sent Events with a deployment's status and new results as they come."""
import asyncio
import json

from aiohttp import web

from bot.api import deployment_or_404, describe, waiting_reasons
from bot.keys import store_key
from storage import deployments as queries

routes = web.RouteTableDef()

# Output is stored in batches every 0.25 s (runner.output); looking more often finds nothing new.
POLL_SECONDS = 0.25
BATCH = 500
KEEPALIVE_SECONDS = 15


def _event(kind: str, data, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


@routes.get("/deployments/{id}/events")
async def deployment_events(request: web.Request) -> web.StreamResponse:
    """`status` events (the deployment as /info shows it) and `log` events (each new result, its
    text JSON-encoded, its id the result's) until the deployment finished, then `end`.

    `?after=N` or a `Last-Event-ID` header resumes after result N."""
    store = request.app[store_key]
    target_id = (await deployment_or_404(request)).id
    after = request.headers.get("Last-Event-ID") or request.query.get("after") or "0"
    after = int(after) if after.isascii() and after.isdigit() and len(after) < 19 else 0
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
    await response.prepare(request)
    shown, quiet_since = None, asyncio.get_running_loop().time()
    while True:
        # The deployment before its results: what was stored with its final status is then
        # read before `end` is sent.
        deployment = await store.run(queries.get, target_id)
        status = describe(deployment, (await waiting_reasons(request, [deployment])).get(target_id))
        wrote = status != shown
        if wrote:
            await response.write(_event("status", status))
            shown = status
        results = await store.run(queries.results_after, target_id, after, BATCH)
        for result_id, text in results:
            await response.write(_event("log", text, result_id))
            after = result_id
        if deployment.state.finished and len(results) < BATCH:
            await response.write(_event("end", {"status": deployment.status}))
            return response
        now = asyncio.get_running_loop().time()
        if wrote or results:
            quiet_since = now
        elif now - quiet_since > KEEPALIVE_SECONDS:
            await response.write(b": keep-alive\n\n")  # proxies drop silent streams
            quiet_since = now
        if len(results) < BATCH:
            await asyncio.sleep(POLL_SECONDS)
