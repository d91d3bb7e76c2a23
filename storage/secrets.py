"""Every query on secrets. Values arrive and leave encrypted: storage never sees one in clear."""
import json
from typing import Any, Callable, Iterator

from peewee import Field, Model

from storage.db import write_transaction
from storage.errors import NotFound
from storage.keyring import Keyring, KeyringError
from storage.models import Deployment, Secret, utcnow


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


def held_for(deployment_id: int) -> tuple[tuple[str, ...], str | None]:
    """Every secret's ciphertext, and the values sealed for the deployment's container."""
    values = tuple(s.value for s in Secret.select(Secret.value).order_by(Secret.id))
    sealed = (Deployment.select(Deployment.secrets_sealed)
              .where(Deployment.id == deployment_id).scalar())
    return values, sealed


def delete(name: str) -> None:
    """Remove a secret, or NotFound."""
    if not Secret.delete().where(Secret.name == name).execute():
        raise NotFound(name)


# Every column that holds ciphertexts, and what a row is called: rotation re-encrypts them
# all, and start-up checks the keys against them. A running deployment's sealed values count:
# a restart must still read them to redact its output.
_HOLDERS = ((Secret, Secret.name, Secret.value, "secret"),
            (Deployment, Deployment.id, Deployment.secrets_sealed, "deployment"))


def _stored() -> Iterator[tuple[type[Model], Field, Field, Any, str, str]]:
    """(model, key, column, row key, its name, ciphertext) for every ciphertext stored."""
    for model, key, column, what in _HOLDERS:
        for row in list(model.select(key, column).where(column.is_null(False))):
            row_key = getattr(row, key.name)
            yield model, key, column, row_key, f"{what} {row_key}", getattr(row, column.name)


def ciphertexts() -> dict[str, str]:
    """Every ciphertext stored, by what holds it ("secret NAME", "deployment ID")."""
    return {name: ciphertext for *_, name, ciphertext in _stored()}


def check_keys(keyring: Keyring) -> None:
    """Keyring.check against every ciphertext stored: before the keys are first used."""
    keyring.check(list(ciphertexts().values()))


def reencrypt(rotate: Callable[[str], str]) -> int:
    """Put rotate(ciphertext) for each ciphertext it can read, in one transaction; how many."""
    replaced = 0
    with write_transaction():
        for model, key, column, row_key, _, ciphertext in _stored():
            try:
                new = rotate(ciphertext)
            except KeyringError:
                continue  # left as it is: the caller names what no key reads
            # Only if unchanged: a value set meanwhile (another database session) stays.
            replaced += model.update({column: new}).where(
                key == row_key, column == ciphertext).execute()
    return replaced
