"""Typed application keys: all of the app's state lives under these."""
from aiohttp import web

from bot.config import Config
from bot.github import GitHub
from bot.metrics import Metrics
from bot.reporter import Reporter
from runner.base import Backend
from runner.worker import Worker
from storage.store import Store

config_key = web.AppKey("config", Config)
store_key = web.AppKey("store", Store)
backend_key = web.AppKey("backend", Backend)
worker_key = web.AppKey("worker", Worker)
github_key = web.AppKey("github", GitHub | None)
reporter_key = web.AppKey("reporter", Reporter)
metrics_key = web.AppKey("metrics", Metrics)
# True on the listener that containers reach: it serves only their callbacks, token always required.
callback_only_key = web.AppKey("callback_only", bool)
