"""Typed application keys: all of the app's state lives under these."""
from typing import TYPE_CHECKING

from aiohttp import web

from bot.config import Config
from bot.github import GitHub
from bot.metrics import Metrics
from bot.reporter import Reporter
from runner.base import Backend
from runner.replica import Identity
from runner.router import Router
from runner.worker import Worker
from storage.keyring import Keyring
from storage.store import Store

if TYPE_CHECKING:
    from bot.feed import Feed

config_key = web.AppKey("config", Config)
store_key = web.AppKey("store", Store)
backend_key = web.AppKey("backend", Backend)
worker_key = web.AppKey("worker", Worker)
identity_key = web.AppKey("identity", Identity)  # this process as a replica (runner.replica)
github_key = web.AppKey("github", GitHub | None)
reporter_key = web.AppKey("reporter", Reporter)
metrics_key = web.AppKey("metrics", Metrics)
keyring_key = web.AppKey("keyring", Keyring)
router_key = web.AppKey("router", Router)
# Verdicts of bot.auth's host guard, by Host header and local address.
trusted_hosts_key = web.AppKey("trusted_hosts", dict)
# True on the listener that containers reach: it serves only their callbacks, token always required.
callback_only_key = web.AppKey("callback_only", bool)
# Typed by annotation only: bot.feed reads the keys above, so importing it here would be a cycle.
feed_key: web.AppKey["Feed"] = web.AppKey("feed")
