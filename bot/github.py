"""Talking to GitHub's REST API: a gidgethub client and the credentials it uses."""
import datetime
import pathlib

import aiohttp
from gidgethub import apps
from gidgethub.aiohttp import GitHubAPI

from bot.config import GitHubConfig

USER_AGENT = "speed-deploy-bot"
# An installation token is renewed this long before GitHub says it expires.
TOKEN_MARGIN = datetime.timedelta(minutes=5)


def _private_key(value: str) -> str:
    if value.lstrip().startswith("-----BEGIN"):
        return value
    return pathlib.Path(value).read_text()


class GitHub:
    """A gidgethub client for one GitHub (or GitHub Enterprise), with token or App credentials."""

    def __init__(self, config: GitHubConfig):
        self.config = config
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=config.request_timeout))
        self.api = GitHubAPI(self._session, USER_AGENT, base_url=config.api_url.rstrip("/"))
        self._key = _private_key(config.private_key) if config.app else None
        self._tokens: dict[int, tuple[str, datetime.datetime]] = {}

    @property
    def configured(self) -> bool:
        return bool(self.config.token or self.config.app)

    def jwt(self) -> str:
        """A JWT that authenticates as the GitHub App itself."""
        return apps.get_jwt(app_id=self.config.app_id, private_key=self._key)

    async def token(self, full_name: str, installation_id: int | None = None) -> str:
        """A token that may act on the repository: the configured one, or an installation's."""
        if self.config.token:
            return self.config.token
        if installation_id is None:
            found = await self.api.getitem(f"/repos/{full_name}/installation", jwt=self.jwt())
            installation_id = found["id"]
        cached = self._tokens.get(installation_id)
        now = datetime.datetime.now(datetime.timezone.utc)
        if cached and cached[1] - TOKEN_MARGIN > now:
            return cached[0]
        issued = await apps.get_installation_access_token(
            self.api, installation_id=str(installation_id), app_id=self.config.app_id,
            private_key=self._key)
        expires = datetime.datetime.fromisoformat(issued["expires_at"].replace("Z", "+00:00"))
        self._tokens[installation_id] = (issued["token"], expires)
        return issued["token"]

    def forget_tokens(self) -> None:
        """GitHub refused a token (401: revoked, or expired early): new ones from now on."""
        self._tokens.clear()

    def secrets(self) -> list[str]:
        """Every credential in use, for redaction."""
        return [s for s in [self.config.token, *(t for t, _ in self._tokens.values())] if s]

    async def close(self) -> None:
        await self._session.close()
