"""The application factory: app state, the worker, and the listener containers call back to."""
import asyncio
import logging
from typing import AsyncIterator

from aiohttp import web

from bot.api import callback_routes, routes
from bot.config import Config
from bot.auth import host_guard_middleware, same_origin_middleware
from bot.errors import error_middleware
from bot.github import GitHub
from bot.keys import (backend_key, callback_only_key, config_key, feed_key, github_key,
                      identity_key, keyring_key, metrics_key, reporter_key, router_key, store_key,
                      trusted_hosts_key, worker_key)
from bot.metrics import Metrics
from bot.badge import routes as badge_routes
from bot.browser_pages import browser_pages
from bot.environments import environments_page, routes as environment_routes
from bot.events import routes as event_routes
from bot.feed import Feed
from bot.listener import CallbackSite, listener_runner
from bot.login import read_guard_middleware, routes as login_routes
from bot.openapi import routes as openapi_routes
from bot.ops import routes as ops_routes
from bot.pages import routes as page_routes
from bot.reporter import Reporter
from bot.rules import full_name_of_url
from bot.webhook import announce_webhook_policy, routes as webhook_routes
from bot.requests import MAX_BODY
from bot.secrets_api import keyring_for, routes as secret_routes
from bot.secrets_page import secrets_page
from bot.server import name_the_server
from runner.base import Backend, Limits
from runner.backends import find_backend
from runner.pipeline import RunnerSettings
from runner.proxy import Proxy
from runner.router import Router
from runner.service import HealthWatch
from runner.secrets import SecretSource
from runner.errors import RunnerError
from runner.replica import Identity
from runner.worker import ENGINE_RETRY_SECONDS, Worker
from storage import deployments as queries
from storage import secrets as secret_queries
from storage.db import is_postgres
from storage.notices import Notices
from storage.store import Store

log = logging.getLogger(__name__)

WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def _application(config: Config, routes_: web.RouteTableDef, callback_only: bool) -> web.Application:
    # The Host check comes first: a request for a name SPEED does not go by gets nothing else.
    app = web.Application(middlewares=[error_middleware, host_guard_middleware,
                                       same_origin_middleware], client_max_size=MAX_BODY)
    app.on_response_prepare.append(name_the_server)
    app[config_key] = config
    app[callback_only_key] = callback_only
    app[trusted_hosts_key] = {}
    app.add_routes(routes_)
    return app


def create_app(config: Config, backend: Backend | None = None) -> web.Application:
    """The SPEED application for this configuration."""
    app = _application(config, routes, callback_only=False)
    app.add_routes(webhook_routes)
    app.add_routes(page_routes)
    app.add_routes(badge_routes)
    app.add_routes(ops_routes)
    app.add_routes(event_routes)
    app.add_routes(openapi_routes)
    app.add_routes(login_routes)
    app.add_routes(secret_routes)
    app.add_routes(environment_routes)
    app.middlewares.append(read_guard_middleware)
    # These are pages for a browser (Accept: text/html), JSON for the rest.
    app.middlewares.append(browser_pages({"/secrets": secrets_page,
                                          "/environments": environments_page}))
    app.on_startup.append(announce_webhook_policy)
    app[metrics_key] = Metrics()
    app[keyring_key] = keyring_for(config)
    app[backend_key] = backend or find_backend(config.runner)
    app[identity_key] = Identity()
    app.cleanup_ctx.append(_storage_context)
    app.cleanup_ctx.append(_github_context)
    app.cleanup_ctx.append(_runner_context)
    app.cleanup_ctx.append(_feed_context)
    return app


async def _storage_context(app: web.Application) -> AsyncIterator[None]:
    store = Store(app[config_key].database.url)
    try:
        # Before anything encrypts: with a lost or wrong key, stop here rather than make a new
        # key and run on with every stored secret unreadable.
        await store.run(secret_queries.check_keys, app[keyring_key])
    except BaseException:
        store.close()
        raise
    app[store_key] = store
    store.subscribe(app[metrics_key].observe)
    yield
    store.close()


async def _feed_context(app: web.Application) -> AsyncIterator[None]:
    """The live streams' one reader of the database; it reads only while a stream is open."""
    feed = Feed(app)
    app[feed_key] = feed
    app[store_key].subscribe(feed.changed)
    yield
    feed.close()


async def _github_context(app: web.Application) -> AsyncIterator[None]:
    """With GitHub credentials: send GitHub's outbox (when this replica leads), and catch up on
    what was missed."""
    config, store = app[config_key], app[store_key]
    github = GitHub(config.github) if config.github.token or config.github.app else None
    app[github_key] = github
    if github is None:
        yield
        return
    # Patient: what GitHub accepted is recorded once a full disk has room again.
    reporter = Reporter(config, store.patient(), github, app[identity_key].id,
                        on_failure=app[metrics_key].report_failures.inc)
    app[reporter_key] = reporter
    store.subscribe(reporter)
    sending = asyncio.create_task(reporter.run(), name="speed-reporter")

    async def stop_reporting(_: web.Application) -> None:
        # First thing at shutdown: before the worker gives up this replica's lease, whereupon
        # another replica takes up the outbox.
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
        await reporter.close()

    app.on_shutdown.append(stop_reporting)
    yield
    await stop_reporting(app)
    await github.close()


def _credentials(github: GitHub | None):
    """Clone GitHub repositories with SPEED's token; only the repository itself, never a fork."""

    async def credentials(deployment) -> str | None:
        if github is None or not deployment.repo_full_name:
            return None
        if full_name_of_url(deployment.url) != deployment.repo_full_name.lower():
            return None
        return await github.token(deployment.repo_full_name, deployment.installation_id)

    return credentials


async def _runner_context(app: web.Application) -> AsyncIterator[None]:
    config, store = app[config_key], app[store_key]
    runner = config.runner
    settings = RunnerSettings(
        instance=await store.run(queries.instance_id), api_url="",
        limits=Limits(memory=runner.memory, cpus=runner.cpus, pids=runner.pids),
        timeout=runner.timeout, workdir=runner.workdir, max_log_bytes=runner.max_log_bytes,
        keep_images=runner.keep_images, git_timeout=runner.git_timeout,
        reuse_images=runner.reuse_images, allowed_urls=runner.allowed_urls)
    # A server of this instance's own in Caddy: another SPEED on the same Caddy cannot wipe
    # its routes (and gets Caddy's refusal if it wants the same listen address).
    proxy = Proxy(config.proxy.admin, config.proxy.listen, server=f"speed-{settings.instance}")
    # Patient: a full database disk makes the routes and the health watch wait, never stop.
    router = app[router_key] = Router(store.patient(), proxy, config.proxy)
    worker = Worker(store, app[backend_key], settings, runner.max_concurrent,
                    credentials=_credentials(app[github_key]),
                    secrets=SecretSource(store, app[keyring_key], {config.github.repository_host}),
                    router=router, lease=runner.lease, identity=app[identity_key])
    app[worker_key] = worker
    notices = None
    if is_postgres(config.database.url):
        # Work queued and cancels made on other replicas reach this one at once, not at its
        # next heartbeat.
        loop = asyncio.get_running_loop()
        reporter = app.get(reporter_key)
        notices = Notices(config.database.url, lambda deployment_id, status: loop.call_soon_threadsafe(
            worker.heard, deployment_id, status),
            report=lambda: reporter and loop.call_soon_threadsafe(reporter.heard))
        notices.start()
    listener: list[web.AppRunner] = []
    tasks = [asyncio.create_task(_run_worker(app, worker, listener), name="speed-worker"),
             asyncio.create_task(router.watch(), name="speed-routes"),
             asyncio.create_task(HealthWatch(store.patient(), app[backend_key]).run(),
                                 name="speed-health")]

    async def stop_taking_work(_: web.Application) -> None:
        # At the start of shutdown, before open requests (a live log stream) are waited for:
        # nothing new is claimed, and running containers are left for the next start.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await worker.close()

    app.on_shutdown.append(stop_taking_work)
    yield
    await stop_taking_work(app)
    if notices:
        await asyncio.to_thread(notices.close)
    await proxy.close()
    for site_runner in listener:
        await site_runner.cleanup()


async def _run_worker(app: web.Application, worker: Worker, listener: list[web.AppRunner]) -> None:
    """Once the engine answers: open the callback listener, then work the queue."""
    config = app[config_key]
    host = config.runner.callback_host
    while not host:
        await worker.wait_for_engine()
        try:
            host = await app[backend_key].callback_host()
        except RunnerError as e:
            log.error("cannot find where containers reach SPEED: %s; set runner.callback_host",
                      e.message)
            await asyncio.sleep(ENGINE_RETRY_SECONDS)
    port = config.runner.callback_port or config.server.port
    if config.server.host not in WILDCARD_HOSTS:
        callback_app = _application(config, callback_routes, callback_only=True)
        callback_app[store_key], callback_app[worker_key] = app[store_key], worker
        # Containers reach this listener directly: it caps connections per container and
        # closes those that send no request head in time (bot/listener.py).
        site_runner = listener_runner(callback_app)
        await site_runner.setup()
        listener.append(site_runner)
        try:
            await CallbackSite(site_runner, host, port).start()
        except OSError as e:
            log.error("cannot listen for container callbacks on %s:%s: %s", host, port, e)
    await worker.serve(api_url=config.runner.callback_url.rstrip("/")
                       or f"http://{host}:{port}")
