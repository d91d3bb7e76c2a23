"""A deployment's secrets: checked against their scopes before the build, decrypted only when
the container is made, and every form of each value redacted."""
import base64
import json

from runner.errors import SettingsInvalid
from runner.scope import Recipient, Scope, refusal
from storage import secrets as queries
from storage.keyring import Keyring, KeyringError
from storage.models import Deployment, Secret
from storage.store import Store

# Values shorter than this are refused when a secret is set: every occurrence of a value is
# redacted from the output, and a short one would cut holes in ordinary text.
MIN_VALUE = 6


def recipient(deployment: Deployment) -> Recipient:
    """What the scope rule looks at in a deployment."""
    return Recipient(deployment.url, deployment.branch, deployment.pull_request,
                     bool(deployment.fork))


def scope(secret: Secret) -> Scope:
    """A stored secret's scope."""
    return Scope(tuple(json.loads(secret.repositories)), tuple(json.loads(secret.branches)),
                 bool(secret.pull_requests))


def forms(value: str) -> list[str]:
    """Every form of a value that output must not show: the value, each of its lines (a key
    printed line by line), and its base64 encodings."""
    found = [value, *(line.strip() for line in value.splitlines())]
    encoded = base64.b64encode(value.encode()).decode()
    found += [encoded, encoded.rstrip("="), encoded.replace("+", "-").replace("/", "_"),
              encoded.replace("+", "-").replace("/", "_").rstrip("=")]
    return list(dict.fromkeys(form for form in found if len(form) >= MIN_VALUE))


class SecretSource:
    """The secrets a deployment asks for by name, from the store and the keyring."""

    def __init__(self, store: Store, keyring: Keyring):
        self._store = store
        self._keyring = keyring

    async def check(self, deployment: Deployment, names: tuple[str, ...]) -> list[Secret]:
        """The named secrets, once the deployment may have each; SettingsInvalid naming the
        first it may not have, and why."""
        if not names:
            return []
        found = await self._store.run(queries.named, list(names))
        to = recipient(deployment)
        for name in names:
            secret = found.get(name)
            why = "not defined" if secret is None else refusal(scope(secret), to)
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
