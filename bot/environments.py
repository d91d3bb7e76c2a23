"""Environments over HTTP: every environment with its live release and history, and rollback."""
from aiohttp import web

from bot.api import iso
from bot.auth import require_api_token
from bot.errors import json_error
from bot.keys import config_key, reporter_key, router_key, store_key, worker_key
from bot.pages import render
from bot.requests import json_object, path_id
from storage import deployments as queries
from storage import releases
from storage.models import Environment
from storage.releases import NoEnvironment, ReleaseRefused

routes = web.RouteTableDef()


def describe_release(release: dict) -> dict:
    """A release (as storage.releases.environments lists it) as the API shows it."""
    return {"id": release["id"], "deployment": release["deployment"],
            "commit": release["commit"], "state": release["state"],
            "started_at": iso(release["started_at"]), "live_since": iso(release["live_since"]),
            "retired_at": iso(release["retired_at"]),
            "rollback": release["state"] in releases.RETURNABLE}


def describe_environment(environment: Environment, history: list[dict], url: str) -> dict:
    """An environment as the API shows it: its live release and health first."""
    live = next((r for r in history if r["id"] == environment.live), None)
    return {"id": environment.id, "repository": environment.repository,
            "name": environment.name, "url": url,
            "live": describe_release(live) if live else None,
            "healthy": live is not None and live["health"] is None,
            "health": live["health"] if live else "nothing is live",
            "releases": [describe_release(r) for r in history]}


async def environment_list(app: web.Application) -> list[dict]:
    """Every environment as the API shows it."""
    router = app[router_key]
    return [describe_environment(e["environment"], e["releases"],
                                 router.url(e["environment"].address))
            for e in await app[store_key].run(releases.environments)]


@routes.get("/environments")
async def environments(request: web.Request) -> web.Response:
    """Every environment of every repository, with its live release and its history."""
    return web.json_response({"environments": await environment_list(request.app)})


@routes.post("/environments/{id}/rollback")
async def rollback(request: web.Request) -> web.Response:
    """Queue a deployment that makes an earlier release of the environment live again: the
    one the body's "release" names, else the newest kept one."""
    await require_api_token(request, request.app[config_key].auth.api_tokens)
    environment_id = path_id(request, "Environment")
    release_id = None
    if request.body_exists:  # a body is optional; when there is one, it is JSON
        body = await json_object(request, "release")
        release_id = body.get("release")
        if release_id is not None and (isinstance(release_id, bool)
                                       or not isinstance(release_id, int)):
            raise json_error(400, "'release' must be an integer")
    try:
        deployment = await request.app[store_key].change(releases.rollback, environment_id,
                                                         release_id)
    except NoEnvironment:
        raise json_error(404, "Environment not found") from None
    except ReleaseRefused as e:
        raise json_error(409, str(e)) from None
    request.app[worker_key].wake()
    return web.json_response({"id": deployment.id}, status=201)


async def close_preview(app: web.Application, full_name: str, number: int) -> None:
    """A closed pull request: stop its deployments, tear its preview down (route, containers,
    images no other environment uses) and mark its GitHub Deployments inactive."""
    store, worker = app[store_key], app[worker_key]
    cancelled = await store.run(queries.close_pull_request, full_name, number)
    store.announce(*cancelled)
    for deployment in cancelled:
        await worker.stop(deployment.id)
    preview = releases.preview(full_name, number)
    environment = await store.run(releases.find_environment, *preview)
    if environment is None:
        await store.run(releases.close_unmade, *preview)
    elif worker.pipeline.retirer:
        await worker.pipeline.retirer.teardown(environment.id)  # the engine's part goes on after
    if reporter_key in app:
        app[reporter_key].heard()  # GitHub's outbox holds the inactive marks now


async def environments_page(request: web.Request) -> web.Response:
    """Every environment with its live release, health, address and history, and a rollback
    button for each release a rollback may return to."""
    return render("environments.html", environments=await environment_list(request.app))
