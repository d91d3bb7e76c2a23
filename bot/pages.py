"""Human-readable pages: the deployments list and one deployment with its live log."""
import hashlib
import pathlib
import urllib.parse

import jinja2
from aiohttp import web

from bot.api import MAX_LIMIT, deployment_or_404, describe, environment_urls, waiting_reasons
from bot.errors import json_error
from bot.requests import not_modified
from bot.keys import config_key, store_key
from storage import deployments as queries
from storage.deployments import SQLITE_MAX_INT
from storage.models import Deployment, utcnow
from storage.status import Status

routes = web.RouteTableDef()

HERE = pathlib.Path(__file__).parent
STATIC = HERE / "static"
PAGE_SIZE = 50
ACTIVE = frozenset({Status.PENDING.value, Status.RUNNING.value})
# Every script and style is a file under /static: injected markup could not run even if it got in.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self'; connect-src 'self'; form-action 'self'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

# Autoescaping on: nothing a repository or a container prints can become markup.
templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True, undefined=jinja2.StrictUndefined)

STATIC_TYPES = {".css": "text/css", ".js": "text/javascript"}
# The few files the pages use, read once: a fixed set serves nothing else, and errors stay JSON.
_FILES = {path.name: path.read_bytes() for path in STATIC.iterdir() if path.suffix in STATIC_TYPES}
_VERSIONS = {name: hashlib.sha256(body).hexdigest()[:12] for name, body in _FILES.items()}


def _static(name: str) -> str:
    """The URL of a static file, versioned by its content so browsers never run a stale one."""
    return f"/static/{name}?v={_VERSIONS[name]}"


@routes.get("/static/{name}")
async def static_file(request: web.Request) -> web.Response:
    """The pages' stylesheet and scripts; cached for good when asked for by their version."""
    name = request.match_info["name"]
    if name not in _FILES:
        raise json_error(404, "Not found")
    version = _VERSIONS[name]
    headers = {"ETag": f'"{version}"', "X-Content-Type-Options": "nosniff",
               "Cache-Control": "public, max-age=31536000, immutable"
               if request.rel_url.query.get("v") == version else "no-cache"}
    if not_modified(request, version):
        return web.Response(status=304, headers=headers)
    return web.Response(body=_FILES[name], headers=headers, charset="utf-8",
                        content_type=STATIC_TYPES[pathlib.PurePath(name).suffix])


def when(iso: str | None, same_day_as: str | None = None) -> str:
    """An API timestamp as pages show it (UTC): 2026-11-26 10:31:02, or 10:31:02 on same_day_as."""
    if not iso:
        return "—"
    if same_day_as and iso[:10] == same_day_as[:10]:
        return iso[11:19]
    return iso[:19].replace("T", " ")


def duration(seconds: float | None) -> str:
    """Seconds for people: 0.4 s, 41 s, 2 min 05 s, 1 h 02 min."""
    if seconds is None:
        return "—"
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole // 60 % 60:02d} min"


def repo_label(url: str) -> str:
    """A repository URL without its scheme and .git: github.com/acme/app."""
    parts = urllib.parse.urlsplit(url)
    return (parts.netloc + parts.path).removesuffix(".git") if parts.netloc else url


templates.globals["static"] = _static
templates.filters.update(when=when, duration=duration, repo_label=repo_label)


def _elapsed(deployment: Deployment) -> float | None:
    """Seconds from start to finish, or so far while it runs."""
    start = deployment.started_at
    if start is None:
        return None
    end = deployment.finished_at or (None if deployment.state.finished else utcnow())
    return (end - start).total_seconds() if end else None


def settings_shown(settings: dict | None) -> list[tuple[str, str]]:
    """What a deployment's .speed.yml set, as (label, value) pairs; secret names only."""
    if not settings:
        return []
    build, resources = settings["build"], settings["resources"]
    shown = [("env", " ".join(f"{k}={v}" for k, v in settings["env"].items())),
             ("secrets", ", ".join(settings["secrets"])),
             ("timeout", duration(settings["timeout"]) if settings["timeout"] else ""),
             ("dockerfile", build["dockerfile"] if build["dockerfile"] != "Dockerfile" else ""),
             ("context", build["context"] if build["context"] != "." else ""),
             ("build args", ", ".join(build["args"])), ("target", build["target"] or ""),
             ("memory", resources["memory"] or ""), ("cpus", str(resources["cpus"] or ""))]
    return [(label, value) for label, value in shown if value]


def _view(request: web.Request, deployment: Deployment, reason: str | None,
          environment_url: str | None = None) -> dict:
    """describe() plus what the pages add: duration and a link to the commit on GitHub."""
    d = describe(deployment, reason, environment_url)
    d["duration"] = _elapsed(deployment)
    d["settings_shown"] = settings_shown(d["settings"])
    d["active"] = d["status"] in ACTIVE
    d["commit_url"] = None
    if deployment.repo_full_name and deployment.commit:
        host = request.app[config_key].github.repository_host
        d["commit_url"] = f"{host}/{deployment.repo_full_name}/commit/{deployment.commit}"
    return d


def render(name: str, **values) -> web.Response:
    """A page from templates/, with the pages' security headers."""
    html = templates.get_template(name).render(**values)
    return web.Response(text=html, content_type="text/html", headers=HEADERS)


def _int_query(query, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = query.get(name, "")
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise json_error(400, f"'{name}' must be an integer between {low} and {high}")
    return int(raw)


def _page_url(**params) -> str:
    kept = {name: value for name, value in params.items() if value}
    return "/?" + urllib.parse.urlencode(kept) if kept else "/"


@routes.get("/")
async def deployments_page(request: web.Request) -> web.Response:
    """Deployments newest first, filtered by status and repository, a page at a time."""
    query = request.rel_url.query
    status_word = query.get("status", "")
    status = Status.parse(status_word) if status_word else None
    if status_word and status is None:
        raise json_error(400, "'status' must be one of " + ", ".join(s.value for s in Status))
    repo = query.get("repo", "").strip()
    limit = _int_query(query, "limit", PAGE_SIZE, 1, MAX_LIMIT)
    before = _int_query(query, "before", None, 1, SQLITE_MAX_INT)
    found = await request.app[store_key].run(queries.listing, limit + 1, status, repo or None,
                                             before)
    more, found = len(found) > limit, found[:limit]
    reasons = await waiting_reasons(request, found)
    urls = await environment_urls(request.app, found)
    rows = [_view(request, d, reasons.get(d.id), urls.get(d.id)) for d in found]
    filters = {"status": status.value if status else "", "repo": repo,
               "limit": str(limit) if limit != PAGE_SIZE else ""}
    return render(
        "list.html", rows=rows, filters=filters, statuses=[s.value for s in Status],
        active=any(row["active"] for row in rows),
        older=_page_url(**filters, before=rows[-1]["id"]) if more else None,
        newest=_page_url(**filters) if before is not None else None)


@routes.get("/deployments/{id}")
async def deployment_page(request: web.Request) -> web.Response:
    """One deployment: its fields, phase timings and full results, live while it runs."""
    store = request.app[store_key]
    deployment = await deployment_or_404(request)
    target_id = deployment.id
    # Read after the deployment: a stream resuming after the last id misses nothing.
    results = await store.run(queries.results_after, target_id, 0, SQLITE_MAX_INT)
    reasons = await waiting_reasons(request, [deployment])
    urls = await environment_urls(request.app, [deployment])
    return render(
        "deployment.html", d=_view(request, deployment, reasons.get(deployment.id),
                                   urls.get(deployment.id)),
        results="".join(text for _, text in results), after=results[-1][0] if results else 0,
        token_field=bool(request.app[config_key].auth.api_tokens))
