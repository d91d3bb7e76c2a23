"""Operations endpoints: /healthz and Prometheus /metrics."""
import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bot.environments import environment_list
from bot.keys import backend_key, config_key, metrics_key, store_key, worker_key
from runner.errors import RunnerError
from storage import deployments as queries
from storage import outbox, replicas
from storage.status import Status

routes = web.RouteTableDef()

HEALTH_TIMEOUT = 3.0


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format."""
    collected = request.app[metrics_key]
    counts = await request.app[store_key].run(queries.counts)
    collected.queued.set(counts[Status.PENDING.value])
    collected.running.set(len(request.app[worker_key].runs))
    running, count, _ = await request.app[store_key].run(replicas.capacity,
                                                         request.app[config_key].runner.lease)
    collected.cluster_running.set(running)
    collected.replicas.set(count)
    collected.reports_unsent.set(await request.app[store_key].run(outbox.unsent))
    collected.environment_healthy.clear()  # torn-down environments drop out
    for environment in await environment_list(request.app):
        collected.environment_healthy.labels(environment["repository"], environment["name"]).set(
            1 if environment["healthy"] else 0)
    response = web.Response(body=generate_latest(collected.registry))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """200 when the database and the container engine answer; 503 with the reason otherwise."""
    checks, healthy = {}, True
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT):
            await request.app[store_key].run(queries.counts)
        checks["database"] = "ok"
    except Exception as e:  # noqa: BLE001 - any failure is the answer
        checks["database"], healthy = f"failing: {type(e).__name__}", False
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT):
            await request.app[backend_key].ping()
        checks["docker"] = "ok"
    except (RunnerError, TimeoutError) as e:
        checks["docker"], healthy = f"failing: {getattr(e, 'message', 'no answer')}", False
    return web.json_response({"status": "ok" if healthy else "unavailable", "checks": checks},
                             status=200 if healthy else 503)
