"""Deployments as text: aligned `key: value` lines, a table, times and durations."""
import datetime

from speedcli.safe import field

COLUMNS = ("ID", "STATUS", "REPO", "BRANCH", "COMMIT", "TRIGGER", "CREATED", "DURATION")


def moment(iso: str | None) -> datetime.datetime | None:
    """An API timestamp ("2026-11-26T00:12:03.123Z") as an aware datetime."""
    return datetime.datetime.fromisoformat(iso) if iso else None


def duration(seconds: float | None) -> str:
    """4.2s, 3m05s, 1h02m; "-" when unknown."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def between(start: str | None, end: str | None) -> float | None:
    """Seconds from one API timestamp to another."""
    begun, ended = moment(start), moment(end)
    return (ended - begun).total_seconds() if begun and ended else None


def _value(key: str, value) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):  # phases show every phase; settings only what was set
        parts = [(k, duration(v) if key == "phases" else _value(k, v)) for k, v in value.items()]
        return ", ".join(f"{k} {v}" for k, v in parts if key == "phases" or v not in ("-", ""))
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def info(deployment: dict) -> str:
    """Every field, one aligned `key: value` line each; waiting_reason only while Pending."""
    # Keys and values both come from the server: escaped, one field can never become two lines.
    shown = {field(key): field(_value(key, value)) for key, value in deployment.items()
             if key != "waiting_reason" or deployment.get("status") == "Pending"}
    width = max((len(key) for key in shown), default=0) + 1
    return "\n".join(f"{key + ':':<{width}} {value}" for key, value in shown.items())


def _created(iso: str | None) -> str:
    created = moment(iso)
    return created.astimezone().strftime("%Y-%m-%d %H:%M:%S") if created else "-"


def _row(d: dict) -> tuple[str, ...]:
    """One table row, each cell escaped: a cell can neither end the row nor move the cursor."""
    return tuple(field(cell) for cell in _cells(d))


def _cells(d: dict) -> tuple[str, ...]:
    """One table row as the server gave it."""
    return (str(d.get("id")), str(d.get("status")), str(d.get("repo_name")),
            str(d.get("repo_branch")), (d.get("commit") or "-")[:7], str(d.get("trigger") or "-"),
            _created(d.get("created_at")),
            duration(between(d.get("started_at"), d.get("finished_at"))))


def aligned(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A header and rows of cells already made safe, in columns two spaces apart."""
    rows = [header, *rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in rows)


def table(deployments: list[dict]) -> str:
    """A header and one row per deployment, columns aligned; times are local."""
    return aligned(COLUMNS, [_row(d) for d in deployments])


SECRET_COLUMNS = ("NAME", "REPOSITORIES", "BRANCHES", "PULL REQUESTS", "UPDATED", "BY")


def _patterns(value, empty: str) -> str:
    """A list of globs as one cell: comma-separated, `empty` for none."""
    if not isinstance(value, list):
        return str(value)
    return ",".join(str(v) for v in value) or empty


def secrets(found: list[dict]) -> str:
    """A header and one row per secret (never a value: the API has none to give); every cell
    escaped, since names, globs and who changed it all come from the server."""
    return aligned(SECRET_COLUMNS, [tuple(field(cell) for cell in (
        str(s.get("name")), _patterns(s.get("repositories"), "-"),
        _patterns(s.get("branches"), "*"), "yes" if s.get("pull_requests") is True else "no",
        _created(s.get("updated_at")), str(s.get("updated_by") or "-"))) for s in found])


ENVIRONMENT_COLUMNS = ("ID", "ENVIRONMENT", "REPOSITORY", "LIVE", "COMMIT", "SINCE", "HEALTH", "URL")


def environments(found: list[dict]) -> str:
    """A header and one row per environment; every cell escaped (it all comes from the server)."""
    rows = []
    for e in found:
        live = e.get("live") if isinstance(e.get("live"), dict) else {}
        rows.append(tuple(field(str(cell)) for cell in (
            e.get("id"), e.get("name"), e.get("repository"),
            f"release {live['id']}" if live.get("id") else "-", (live.get("commit") or "-")[:12],
            _created(live.get("live_since")), "healthy" if e.get("healthy") is True
            else f"unhealthy: {e.get('health')}", e.get("url"))))
    return aligned(ENVIRONMENT_COLUMNS, rows)
