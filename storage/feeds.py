"""Reads for live event streams: many deployments' rows, and their new results, one query each."""
from peewee import SQL

from storage import statements
from storage.models import Deployment, Result

# SQLite refuses a compound SELECT of more than 500 parts (SQLITE_MAX_COMPOUND_SELECT), and peewee
# recurses once per part building one (RecursionError at ~350); the open streams are capped
# (bot.feed.MAX_STREAMS), but a raised cap must not break the query.
MAX_PARTS = 100


def rows(ids: list[int]) -> dict[int, Deployment]:
    """The deployments with these ids, by id; ids no deployment has are left out."""
    return {d.id: d for d in statements.many(Deployment, ids)}


def _after(deployment_id: int, after: int, limit: int):
    """The deployment's first `limit` results after result id `after` (the index's own order)."""
    first = (Result.select(Result.deployment, Result.id, Result.text)
             .where(Result.deployment == deployment_id, Result.id > after)
             .order_by(Result.id).limit(limit))
    # A part of a compound SELECT cannot have its own ORDER BY or LIMIT: wrap it.
    return Result.select(SQL("*")).from_(first.alias("first"))


def _union(parts: list):
    query = parts[0]
    for part in parts[1:]:
        query = query + part  # UNION ALL
    return query


def results_of_many(cursors: dict[int, int], limit: int) -> dict[int, list[tuple[int, str]]]:
    """For each deployment id in cursors, its first `limit` results after the result id it maps
    to: (id, text) in order. One statement: each part walks the deployment's index.

    Result ids serve as cursors because SQLite assigns them in commit order; on PostgreSQL they
    can commit out of order (see bot/feed.py)."""
    found: dict[int, list[tuple[int, str]]] = {deployment_id: [] for deployment_id in cursors}
    items = sorted(cursors.items())
    for start in range(0, len(items), MAX_PARTS):
        some = items[start:start + MAX_PARTS]
        cursor = statements.execute(("results after", len(some)),
                                    [p for d, after in some for p in (d, after, limit)],
                                    lambda: _union([_after(d, after, limit) for d, after in some]))
        # Each part comes out in id order in practice; sorting makes it so by definition.
        for deployment_id, result_id, text in sorted(cursor.fetchall()):
            found[deployment_id].append((result_id, text))
    return found
