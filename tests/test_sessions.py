"""Login sessions are random records on the server: logout deletes them, they expire, removing
their token from the configuration ends them, and the database keeps neither cookie nor token."""
import datetime
import hashlib
import pathlib

from bot.auth import SESSION_COOKIE, SESSION_SECONDS
from bot.keys import config_key, store_key
from storage.models import Session, utcnow

TOKEN = "a-session-token-of-enough-length"
OTHER = "another-session-token-of-enough-length"
HTML = {"Accept": "text/html,application/xhtml+xml"}


async def sign_in(client, token: str = TOKEN) -> str:
    """Sign in through the form; the session cookie's value."""
    response = await client.post("/login", data={"token": token, "next": "/"},
                                 allow_redirects=False)
    assert response.status == 303, await response.text()
    return response.cookies[SESSION_COOKIE].value


async def with_cookie(client, value: str, method: str = "GET", path: str = "/deployments",
                      headers: dict | None = None):
    """A request carrying only this session cookie, as a client that kept a copy of it would."""
    client.session.cookie_jar.clear()
    return await client.request(method, path, allow_redirects=False,
                                headers={"Cookie": f"{SESSION_COOKIE}={value}", **(headers or {})})


async def rows(client) -> list[Session]:
    """The session rows in the app's database."""
    return await client.app[store_key].run(lambda: list(Session.select()))


def database_bytes(client) -> bytes:
    """Every byte of the app's SQLite database, its write-ahead log included."""
    path = pathlib.Path(client.app[config_key].database.url.removeprefix("sqlite:///"))
    return b"".join(p.read_bytes() for p in sorted(path.parent.glob(path.name + "*")))


async def test_logout_ends_the_session_even_for_a_kept_copy_of_the_cookie(make_client):
    client = await make_client(auth__api_tokens=[TOKEN])
    kept = await sign_in(client)
    assert (await with_cookie(client, kept)).status == 200
    response = await with_cookie(client, kept, "POST", "/logout")
    assert (response.status, response.headers["Location"]) == (303, "/login")
    assert response.cookies[SESSION_COOKIE].value == ""  # the browser drops it
    assert (await with_cookie(client, kept)).status == 401
    page = await with_cookie(client, kept, path="/", headers=HTML)
    assert (page.status, page.headers["Location"].split("?")[0]) == (303, "/login")
    assert (await with_cookie(client, kept, "POST", "/cancel/1")).status == 401
    assert await rows(client) == []


async def test_a_session_expires_after_its_lifetime_and_is_pruned(make_client):
    client = await make_client(auth__api_tokens=[TOKEN])
    response = await client.post("/login", data={"token": TOKEN}, allow_redirects=False)
    old = response.cookies[SESSION_COOKIE]
    assert SESSION_SECONDS == 7 * 24 * 3600 and old["max-age"] == str(SESSION_SECONDS)
    [row] = await rows(client)
    assert row.expires_at - row.created_at == datetime.timedelta(seconds=SESSION_SECONDS)
    assert (await with_cookie(client, old.value)).status == 200

    # A week on: the row's expiry has passed, the cookie a client kept is refused.
    past = utcnow() - datetime.timedelta(seconds=1)
    await client.app[store_key].run(lambda: Session.update(expires_at=past).execute())
    assert (await with_cookie(client, old.value)).status == 401
    # The next sign-in removes the expired row.
    new = await sign_in(client)
    assert [r.cookie_hash for r in await rows(client)] == [hashlib.sha256(new.encode()).hexdigest()]


async def test_removing_a_token_from_the_configuration_ends_its_sessions(make_client):
    """A second SPEED on the same database whose configuration no longer has TOKEN."""
    first = await make_client(auth__api_tokens=[TOKEN, OTHER])
    with_token, with_other = await sign_in(first, TOKEN), await sign_in(first, OTHER)
    second = await make_client("second", auth__api_tokens=[OTHER],
                               database__url=first.app[config_key].database.url)
    assert (await with_cookie(second, with_token)).status == 401
    assert (await with_cookie(second, with_other)).status == 200


async def test_cookies_are_random_and_the_database_holds_neither_cookie_nor_token(make_client):
    client = await make_client(auth__api_tokens=[TOKEN])
    one, two = await sign_in(client), await sign_in(client)
    assert one != two and len(one) >= 43  # 256 random bits, not a function of the token
    assert (await with_cookie(client, one)).status == 200
    assert (await with_cookie(client, two)).status == 200
    # Another SPEED with the same token but its own database never made that session.
    elsewhere = await make_client("elsewhere", auth__api_tokens=[TOKEN])
    assert (await with_cookie(elsewhere, one)).status == 401

    stored = database_bytes(client)
    assert hashlib.sha256(one.encode()).hexdigest().encode() in stored  # the rows are there
    for secret in (one, two, TOKEN):
        assert secret.encode() not in stored


async def test_the_cookie_is_secure_behind_an_https_public_url(make_client):
    client = await make_client(auth__api_tokens=[TOKEN], server__public_url="https://speed.example")
    response = await client.post("/login", data={"token": TOKEN}, allow_redirects=False)
    cookie = response.cookies[SESSION_COOKIE]
    assert cookie["secure"] and cookie["httponly"] and cookie["samesite"] == "Strict"
