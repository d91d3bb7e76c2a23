"""Every query on secrets. Values arrive and leave encrypted: storage never sees one in clear."""
import json
from typing import Callable

from storage.db import write_transaction
from storage.errors import NotFound
from storage.models import Secret, utcnow


def put(name: str, ciphertext: str, repositories: list[str], branches: list[str],
        pull_requests: bool, changed_by: str) -> bool:
    """Create or replace a secret; True if it is new."""
    now = utcnow()
    fields = dict(value=ciphertext, repositories=json.dumps(repositories),
                  branches=json.dumps(branches), pull_requests=pull_requests, updated_at=now,
                  updated_by=changed_by)
    with write_transaction():
        replaced = Secret.update(**fields).where(Secret.name == name).execute()
        if not replaced:
            Secret.create(name=name, created_at=now, **fields)
    return not replaced


def listing() -> list[Secret]:
    """Every secret, by name; callers show everything but the value."""
    return list(Secret.select().order_by(Secret.name))


def named(names: list[str]) -> dict[str, Secret]:
    """The secrets with these names, by name (names no secret has are left out)."""
    return {s.name: s for s in Secret.select().where(Secret.name.in_(names))} if names else {}


def delete(name: str) -> None:
    """Remove a secret, or NotFound."""
    if not Secret.delete().where(Secret.name == name).execute():
        raise NotFound(name)


def reencrypt(rotate: Callable[[str], str]) -> int:
    """Replace every ciphertext by rotate(ciphertext) in one transaction; how many there were."""
    with write_transaction():
        secrets = list(Secret.select(Secret.name, Secret.value))
        for secret in secrets:
            Secret.update(value=rotate(secret.value)).where(Secret.name == secret.name).execute()
    return len(secrets)
