"""The secrets page: GET /secrets as a browser asks for it. Names, scope and history as escaped
text, a Delete button per secret, never a value; it needs a token like the JSON does."""
import base64
import hashlib
import re
import uuid

import pytest

from tests.test_browser import browser, tab  # noqa: F401 - Chromium fixtures

try:
    from playwright.async_api import expect
except ImportError:  # the browser fixture reports it
    expect = None

TOKEN = "secrets-page-token-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BY = "token sha256:" + hashlib.sha256(TOKEN.encode()).hexdigest()[:12]
HTML = {"Accept": "text/html,application/xhtml+xml"}


def distinctive() -> str:
    """A value that cannot occur in a page by chance."""
    return "s3cr3t-" + uuid.uuid4().hex


async def put(client, name: str, value: str, repositories: list[str], **scope) -> None:
    response = await client.put(f"/secrets/{name}", headers=AUTH,
                                json={"value": value, "repositories": repositories, **scope})
    assert response.status in (200, 201), await response.text()


def names_listed(html: str) -> list[str]:
    return re.findall(r'<tr data-name="([^"]*)">', html)


def never_shown(text: str, values: list[str]) -> None:
    """None of the values, whole, cut, base64-encoded, nor any ciphertext, is in text."""
    for value in values:
        for shown in (value, value[:12], value[-12:], base64.b64encode(value.encode()).decode()):
            assert shown not in text, shown
    assert "gAAAAA" not in text  # the start of every Fernet token


@pytest.fixture
async def secured(make_client):
    """SPEED with an API token and public reads: the pages are open, secrets are not."""
    return await make_client(auth__api_tokens=[TOKEN], auth__public_reads=True)


async def test_page_lists_names_scope_and_history_as_text_and_never_a_value(secured):
    """Two secrets, one replaced (so two values were ever set for it), with markup in a glob:
    the page lists both by name with their globs (escaped), pull requests, when and by which
    token; none of the three values, nor their ciphertext, is anywhere in the HTML. The page
    keeps the pages' CSP, is not cached, and JSON still answers a program at the same address."""
    client = secured
    old, new, other = distinctive(), distinctive(), distinctive()
    await put(client, "DEPLOY_KEY", old, ["github.com/acme/app"])
    await put(client, "DEPLOY_KEY", new, ["github.com/acme/app", "github.com/acme/<b>web</b>"],
              branches=["main", "release/*"], pull_requests=True)
    await put(client, "API_KEY", other, ["github.com/acme/*"])
    response = await client.get("/secrets", headers={**HTML, **AUTH})
    assert response.status == 200 and response.content_type == "text/html"
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["Cache-Control"] == "no-store" and response.headers["Vary"] == "Accept"
    html = await response.text()
    assert names_listed(html) == ["API_KEY", "DEPLOY_KEY"]
    row = html.split('<tr data-name="DEPLOY_KEY">')[1].split("</tr>")[0]
    assert "<div>github.com/acme/app</div>" in row
    assert "<div>github.com/acme/&lt;b&gt;web&lt;/b&gt;</div>" in row and "<b>" not in html
    assert "<div>main</div><div>release/*</div>" in row and "<td>yes</td>" in row
    assert BY in row and re.search(r"<time datetime=\"[^\"]+Z\">\d{4}-\d\d-\d\d \d\d:\d\d:\d\d<", row)
    assert 'class="delete" data-name="DEPLOY_KEY"' in row
    other_row = html.split('<tr data-name="API_KEY">')[1].split("</tr>")[0]
    assert ">all</span>" in other_row and "<td>no</td>" in other_row
    assert re.search(r'<script src="/static/secrets\.js\?v=\w+" defer>', html)
    never_shown(html, [old, new, other])

    for accept in ({}, {"Accept": "application/json"}, {"Accept": "*/*"}):
        answer = await client.get("/secrets", headers={**accept, **AUTH})
        assert answer.content_type == "application/json", accept
        assert [s["name"] for s in (await answer.json())["secrets"]] == ["API_KEY", "DEPLOY_KEY"]


async def test_the_page_needs_a_token_even_with_public_reads(secured):
    """With public reads the deployments list is open, but the secrets page sends a browser
    without a session to sign in (naming nothing of the secrets), and JSON without a token is
    401. Signed in (a session cookie), the page lists them."""
    client = secured
    await put(client, "DEPLOY_KEY", distinctive(), ["github.com/acme/app"])
    listing = await client.get("/", headers=HTML)
    assert listing.status == 200
    assert '<a href="/secrets">Secrets</a>' in await listing.text()  # linked from the header
    refused = await client.get("/secrets", headers=HTML, allow_redirects=False)
    assert refused.status == 303
    assert refused.headers["Location"] == "/login?next=/secrets"
    assert "DEPLOY_KEY" not in await refused.text()
    wrong = await client.get("/secrets", headers={**HTML, "Authorization": "Bearer wrong-token"},
                             allow_redirects=False)
    assert wrong.status == 303
    assert (await client.get("/secrets")).status == 401

    signed_in = await client.post("/login", data={"token": TOKEN, "next": "/secrets"},
                                  allow_redirects=False)
    assert signed_in.status == 303 and signed_in.headers["Location"] == "/secrets"
    page = await client.get("/secrets", headers=HTML)  # the session cookie, no bearer
    assert page.status == 200 and names_listed(await page.text()) == ["DEPLOY_KEY"]


@pytest.mark.parametrize("settings", [
    pytest.param({"auth__api_tokens": [TOKEN]}, id="private-reads"),
    pytest.param({}, id="no-tokens"),
])
async def test_the_page_follows_the_apis_rule_without_public_reads(make_client, settings):
    """Private reads: a browser is sent to sign in, as for every page. No tokens at all: the
    page is open (SPEED then listens on loopback only), listing nothing at first."""
    client = await make_client(**settings)
    response = await client.get("/secrets", headers=HTML, allow_redirects=False)
    if settings:
        assert response.status == 303 and response.headers["Location"].startswith("/login?")
    else:
        assert response.status == 200
        html = await response.text()
        assert names_listed(html) == [] and '<tr id="no-secrets">' in html


async def test_chromium_lists_two_secrets_and_deletes_one(secured, tab):  # noqa: F811
    """Chromium follows the header's link from the deployments list, is sent to sign in, and
    comes back to the page, which lists both secrets. Delete asks first: dismissed, nothing
    happens; accepted, the page calls DELETE /secrets/{name} with its session, the row goes and
    the API no longer has it, the other stays. Reloaded, the page lists the one left. No value
    is ever in the page."""
    client = secured
    first, second = distinctive(), distinctive()
    await put(client, "FIRST_KEY", first, ["github.com/acme/app"], branches=["main"])
    await put(client, "SECOND_KEY", second, ["github.com/acme/*"], pull_requests=True)
    await tab.goto(str(client.make_url("/")))
    await tab.click("header >> text=Secrets")
    await expect(tab).to_have_url(re.compile(r"/login\?next=/secrets$"))
    await tab.fill("input[name=token]", TOKEN)
    await tab.click("button:has-text('Sign in')")
    await expect(tab).to_have_url(str(client.make_url("/secrets")))
    rows = tab.locator("#secrets tbody tr[data-name]")
    await expect(rows).to_have_count(2)
    await expect(rows.nth(0)).to_contain_text("FIRST_KEY")
    await expect(rows.nth(0)).to_contain_text("github.com/acme/app")
    await expect(rows.nth(1)).to_contain_text("SECOND_KEY")
    await expect(rows.nth(1)).to_contain_text(BY)
    never_shown(await tab.content(), [first, second])

    dialogs = []

    async def answer(dialog):
        dialogs.append(dialog.message)
        await (dialog.dismiss() if len(dialogs) == 1 else dialog.accept())

    tab.on("dialog", answer)
    delete = tab.locator('tr[data-name="FIRST_KEY"] button.delete')
    await delete.click()  # dismissed
    await expect(delete).to_be_enabled()
    assert dialogs == ["Delete the secret FIRST_KEY? Deployments that ask for it will fail."]
    assert await names(client) == ["FIRST_KEY", "SECOND_KEY"]
    await delete.click()  # accepted
    await expect(tab.locator("#message")).to_have_text("Deleted FIRST_KEY.")
    await expect(rows).to_have_count(1)
    await expect(rows.nth(0)).to_contain_text("SECOND_KEY")
    await expect(tab.locator("#no-secrets")).to_be_hidden()
    assert await names(client) == ["SECOND_KEY"]

    await tab.reload()
    await expect(rows).to_have_count(1)
    await expect(rows.nth(0)).to_contain_text("SECOND_KEY")
    never_shown(await tab.content(), [first, second])


async def test_chromium_says_why_a_delete_failed_and_empties_the_list(secured, tab):  # noqa: F811
    """A secret deleted elsewhere meanwhile: the page's Delete removes its row, saying it was
    already deleted. A session that ended (signed out in another tab): Delete says a token is
    needed and the row stays. The last row gone, the page says there are no secrets."""
    client = secured
    await put(client, "ONLY_KEY", distinctive(), ["github.com/acme/app"])
    await put(client, "ELSEWHERE", distinctive(), ["github.com/acme/app"])
    await tab.goto(str(client.make_url("/login?next=/secrets")))
    await tab.fill("input[name=token]", TOKEN)
    await tab.click("button:has-text('Sign in')")
    rows = tab.locator("#secrets tbody tr[data-name]")
    await expect(rows).to_have_count(2)
    tab.on("dialog", lambda dialog: dialog.accept())

    assert (await client.delete("/secrets/ELSEWHERE", headers=AUTH)).status == 200
    await tab.click('tr[data-name="ELSEWHERE"] button.delete')
    await expect(tab.locator("#message")).to_have_text("ELSEWHERE was already deleted.")
    await expect(rows).to_have_count(1)

    assert await tab.evaluate("fetch('/logout', {method: 'POST'}).then(r => r.ok)")
    await tab.click('tr[data-name="ONLY_KEY"] button.delete')
    await expect(tab.locator("#message")).to_contain_text("A valid API token is required")
    await expect(tab.locator("#message")).to_have_class(re.compile(r"\berror\b"))
    await expect(rows).to_have_count(1)
    assert await names(client) == ["ONLY_KEY"]

    await tab.goto(str(client.make_url("/login?next=/secrets")))
    await tab.fill("input[name=token]", TOKEN)
    await tab.click("button:has-text('Sign in')")
    await tab.click('tr[data-name="ONLY_KEY"] button.delete')
    await expect(rows).to_have_count(0)
    await expect(tab.locator("#no-secrets")).to_be_visible()
    assert await names(client) == []


async def names(client) -> list[str]:
    response = await client.get("/secrets", headers=AUTH)
    return [s["name"] for s in (await response.json())["secrets"]]
