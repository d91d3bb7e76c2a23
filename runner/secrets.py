"""A deployment's secrets: checked against their scopes before the build, decrypted only when
the container is made, and every form of each value redacted."""
import asyncio
import base64
import contextlib
import json
import re
import urllib.parse
from typing import Callable, Iterable

from runner.errors import SettingsInvalid
from runner.output import REDACTED, pattern_of
from runner.scope import Recipient, Scope, barred, host, refusal
from storage import secrets as queries
from storage.keyring import Keyring, KeyringError
from storage.models import Deployment, Secret
from storage.store import Store

# Values shorter than this are refused when a secret is set: every occurrence of a value is
# redacted from the output, and a short one would cut holes in ordinary text.
MIN_VALUE = 6
PATTERNS_KEPT = 32  # redaction patterns kept compiled: one per deployment running at once


def recipient(deployment: Deployment) -> Recipient:
    """What the scope rule looks at in a deployment."""
    return Recipient(deployment.url, deployment.branch, deployment.pull_request,
                     bool(deployment.fork))


def scope(secret: Secret) -> Scope:
    """A stored secret's scope."""
    return Scope(tuple(json.loads(secret.repositories)), tuple(json.loads(secret.branches)),
                 bool(secret.pull_requests))


def forms(value: str) -> list[str]:
    """Every form of a value that output must not show, MIN_VALUE characters or longer."""
    # The value and each of its lines (a key printed line by line), as they are, JSON-escaped
    # and URL-quoted; its base64 encodings whole, wrapped, and amid other bytes.
    texts = [value, *(line.strip() for line in value.splitlines())]
    found = [form for text in texts for form in _escaped(text)] + _base64_forms(value.encode())
    return list(dict.fromkeys(form for form in found if len(form) >= MIN_VALUE))


def _escaped(text: str) -> list[str]:
    """text as it is, inside a JSON string (non-ASCII escaped or not), and URL-quoted."""
    return [text, json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1],
            urllib.parse.quote(text, safe=""), urllib.parse.quote_plus(text)]


def _base64_forms(data: bytes) -> list[str]:
    """data's base64, standard and URL-safe: whole, unpadded, wrapped, and amid other bytes."""
    # Wrapped: each line at 76 characters (base64, MIME) and at 64 (PEM, openssl).
    found = []
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        whole = encode(data).decode()
        found += [whole, whole.rstrip("=")]
        found += [whole[at:at + width] for width in (76, 64) for at in range(0, len(whole), width)]
        found += [_amid(encode, data, offset) for offset in (0, 1, 2)]
    return found


def _amid(encode: Callable[[bytes], bytes], data: bytes, offset: int) -> str:
    """What stays of data's base64 with offset other bytes before it and any after it."""
    encoded = encode(bytes(offset) + data).decode()
    # Only the 4-character groups holding data's bytes alone: the first also holds the bytes
    # before (if any), a last partial one those after.
    return encoded[4 if offset else 0:4 * ((offset + len(data)) // 3)]


class SecretSource:
    """The secrets a deployment asks for by name, from the store and the keyring."""

    def __init__(self, store: Store, keyring: Keyring, ignore_case: Iterable[str] = ()):
        """ignore_case: URLs of the git servers known to ignore a path's case (GitHub's)."""
        self._store = store
        self._keyring = keyring
        self._ignore_case = frozenset(host(url) for url in ignore_case)
        # The patterns of what redacted() read lately: running deployments' sealed values differ.
        self._patterns: dict[tuple, re.Pattern | None] = {}

    async def check(self, deployment: Deployment, names: tuple[str, ...]) -> list[Secret]:
        """The named secrets, once the deployment may have each; SettingsInvalid naming the
        first it may not have, and why."""
        if not names:
            return []
        to = recipient(deployment)
        # Before the lookup: a fork hears the same whichever names exist.
        barred_why = barred(to)
        if barred_why:
            raise SettingsInvalid(f"secret {names[0]}: {barred_why}")
        found = await self._store.run(queries.named, list(names))
        for name in names:
            secret = found.get(name)
            why = ("not defined" if secret is None else
                   refusal(scope(secret), to, self._ignore_case))
            if why:
                raise SettingsInvalid(f"secret {name}: {why}")
        return [found[name] for name in names]

    async def values(self, deployment: Deployment, names: tuple[str, ...]) -> dict[str, str]:
        """The named secrets' values, checked again (a secret may have changed since)."""
        try:
            return {secret.name: self._keyring.decrypt(secret.value)
                    for secret in await self.check(deployment, names)}
        except KeyringError as e:
            raise SettingsInvalid(f"secrets: {e}") from None

    async def redacted(self, deployment_id: int, text: str) -> str:
        """text without any form of a value SPEED holds: every secret's, and those the
        deployment's container got (a value changed since may still come back from it)."""
        held = await self._store.run(queries.held_for, deployment_id)
        if held not in self._patterns:
            # Thousands of forms compile in a thread; a changed secret changes its ciphertext.
            pattern = await asyncio.to_thread(self._pattern, *held)
            if len(self._patterns) >= PATTERNS_KEPT:
                del self._patterns[next(iter(self._patterns))]  # the oldest
            self._patterns[held] = pattern
        pattern = self._patterns[held]
        return pattern.sub(REDACTED, text) if pattern else text

    def _pattern(self, ciphertexts: tuple[str, ...], sealed: str | None) -> re.Pattern | None:
        """The pattern of every form of these values (one no key reads cannot have reached a
        container: it is left out)."""
        values = []
        for ciphertext in ciphertexts:
            with contextlib.suppress(KeyringError):
                values.append(self._keyring.decrypt(ciphertext))
        with contextlib.suppress(KeyringError):
            values += json.loads(self._keyring.decrypt(sealed)) if sealed else []
        # A value set before today's limits (six spaces) would cut holes in every deployment's
        # text here: its own deployments' output still has it redacted.
        return pattern_of([form for value in dict.fromkeys(values)
                           if len(value.strip()) >= MIN_VALUE for form in forms(value)])

    def seal(self, values: list[str]) -> str:
        """Values a container got, encrypted, to be kept with its deployment while it runs."""
        return self._keyring.encrypt(json.dumps(values))

    def unseal(self, sealed: str) -> list[str]:
        """The values seal() sealed; SettingsInvalid if no key reads them any more."""
        try:
            return json.loads(self._keyring.decrypt(sealed))
        except KeyringError as e:
            raise SettingsInvalid(f"secrets: {e}") from None
