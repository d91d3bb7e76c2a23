"""With API tokens, reading needs a token too: deployments, results and logs stay private to
token holders; browsers sign in once and get a session cookie that is not the token."""
import re
import urllib.parse

import pytest

from bot.auth import SESSION_COOKIE

TOKEN = "a-reading-token-of-enough-length"
OTHER = "another-token-of-enough-length"
CLOSED = "http://127.0.0.1:9/none.git"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
HTML = {"Accept": "text/html,application/xhtml+xml"}


@pytest.fixture
async def private(make_client):
    """SPEED with API tokens and one deployment."""
    client = await make_client(auth__api_tokens=[TOKEN, OTHER])
    response = await client.post("/start", json={"url": CLOSED, "branch": "main"}, headers=BEARER)
    client.target = (await response.json())["id"]
    return client


def reads(target: int) -> list[str]:
    return [f"/info/{target}", f"/results/{target}", "/deployments", "/metrics",
            f"/deployments/{target}/events"]


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token-of-enough-length",
                                           f"Basic {TOKEN}", f"Bearer {TOKEN}x"])
async def test_reads_without_a_valid_token_are_refused(private, authorization):
    """Deployment logs are not readable by whoever reaches SPEED: a JSON 401, nothing shown."""
    headers = {"Authorization": authorization} if authorization else {}
    for path in reads(private.target):
        response = await private.get(path, headers=headers)
        assert response.status == 401, path
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert "token" in (await response.json())["error"]


async def test_reads_with_a_token_answer(private):
    for path in reads(private.target)[:4]:
        assert (await private.get(path, headers=BEARER)).status == 200, path


async def test_health_badge_description_and_webhook_stay_open(private):
    """Load balancers, README badges and GitHub do not hold API tokens."""
    assert (await private.get("/healthz")).status in (200, 503)
    assert (await private.get("/openapi.json")).status == 200
    assert (await private.get("/badge/acme/app.svg")).status == 200
    webhook = await (await private.post("/webhook", data=b"{}")).json()
    assert "API token" not in webhook.get("error", "")  # it answers for its signature instead


async def test_a_browser_is_sent_to_sign_in_and_back(private):
    """A page without a session redirects to the sign-in form, remembering where it was going."""
    page = f"/deployments/{private.target}"
    response = await private.get(page, headers=HTML, allow_redirects=False)
    assert response.status == 303
    location = urllib.parse.urlsplit(response.headers["Location"])
    assert location.path == "/login" and urllib.parse.parse_qs(location.query) == {"next": [page]}
    form = await private.get(response.headers["Location"])
    assert form.status == 200
    assert f'name="next" value="{page}"' in await form.text()


async def test_signing_in_sets_a_strict_session_cookie_that_is_not_the_token(private):
    page = f"/deployments/{private.target}"
    response = await private.post("/login", data={"token": TOKEN, "next": page},
                                  allow_redirects=False)
    assert (response.status, response.headers["Location"]) == (303, page)
    cookie = response.headers["Set-Cookie"]
    assert re.search(r"; HttpOnly", cookie, re.I) and re.search(r"SameSite=Strict", cookie, re.I)
    assert re.search(rf"Max-Age={7 * 24 * 3600}", cookie, re.I)  # a week, then signed out
    assert TOKEN not in cookie
    kept = response.cookies[SESSION_COOKIE].value
    # The client now holds the cookie: pages, the API's reads and mutations work with it.
    assert (await private.get(page, headers=HTML)).status == 200
    assert (await private.get(f"/results/{private.target}")).status == 200
    assert (await private.post(f"/cancel/{private.target}")).status == 200
    # Signing out ends it, on the server too: a copy of the cookie kept from before is refused.
    await private.post("/logout", allow_redirects=False)
    assert (await private.get(f"/info/{private.target}")).status == 401
    replayed = {"Cookie": f"{SESSION_COOKIE}={kept}"}
    assert (await private.get(f"/info/{private.target}", headers=replayed)).status == 401


async def test_a_wrong_token_does_not_sign_in(private):
    response = await private.post("/login", data={"token": "wrong-token-of-enough-length",
                                                  "next": "/"}, allow_redirects=False)
    assert response.status == 401
    assert "not one of this SPEED's API tokens" in await response.text()
    assert SESSION_COOKIE not in response.cookies
    assert (await private.get("/deployments")).status == 401


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/", "/\\evil.example",
                                    "javascript:alert(1)", "http:/evil.example"])
async def test_sign_in_never_redirects_elsewhere(private, target):
    """An open redirect after sign-in would hand a phishing page a trusted link."""
    response = await private.post("/login", data={"token": TOKEN, "next": target},
                                  allow_redirects=False)
    assert (response.status, response.headers["Location"]) == (303, "/")


async def test_a_forged_session_cookie_is_refused(private):
    private.session.cookie_jar.update_cookies({SESSION_COOKIE: TOKEN})
    assert (await private.get("/deployments")).status == 401
    private.session.cookie_jar.update_cookies({SESSION_COOKIE: "0" * 64})
    assert (await private.get("/deployments")).status == 401


async def test_public_reads_keeps_reads_open_and_mutations_closed(make_client):
    client = await make_client(auth__api_tokens=[TOKEN], auth__public_reads=True)
    assert (await client.get("/deployments")).status == 200
    assert (await client.post("/start", json={"url": CLOSED, "branch": "main"})).status == 401
