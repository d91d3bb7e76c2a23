"""Login sessions: random cookie values, stored only as hashes, that expire and that logout ends."""
import datetime
import hashlib
import secrets
from typing import Iterable

from storage.models import Session, utcnow


def fingerprint(secret: str) -> str:
    """The sha256 that is stored in place of a cookie value or an API token."""
    return hashlib.sha256(secret.encode()).hexdigest()


def create(token: str, seconds: int) -> str:
    """A new session for an API token, lasting seconds; returns its cookie value."""
    now = utcnow()
    # Expired rows go whenever one is added, so the table holds at most a lifetime's logins.
    Session.delete().where(Session.expires_at <= now).execute()
    value = secrets.token_urlsafe(32)  # 256 random bits: the hash alone is as good as the value
    Session.create(cookie_hash=fingerprint(value), token_hash=fingerprint(token), created_at=now,
                   expires_at=now + datetime.timedelta(seconds=seconds))
    return value


def valid(value: str, tokens: Iterable[str]) -> bool:
    """Whether value is the cookie of an unexpired session made with one of tokens."""
    # Matching the token too means removing a token from the configuration ends its sessions.
    return Session.select().where(
        Session.cookie_hash == fingerprint(value), Session.expires_at > utcnow(),
        Session.token_hash.in_([fingerprint(token) for token in tokens])).exists()


def delete(value: str) -> None:
    """End the session whose cookie value this is, if there is one."""
    Session.delete().where(Session.cookie_hash == fingerprint(value)).execute()


def token_hash_of(value: str) -> str | None:
    """The sha256 of the API token an unexpired session was made with, if it is one."""
    return Session.select(Session.token_hash).where(
        Session.cookie_hash == fingerprint(value), Session.expires_at > utcnow()).scalar()
