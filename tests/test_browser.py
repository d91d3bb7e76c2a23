"""The dashboard in a real browser: Debian's chromium, driven by Playwright."""
import os
import re

import pytest

try:
    from playwright.async_api import async_playwright, expect
except ImportError:  # reported by the browser fixture, which fails under CI
    async_playwright = expect = None

CHROMIUM = "/usr/bin/chromium"
REBOUND = "rebound.test"  # a name whose owner points it at 127.0.0.1: DNS rebinding, settled
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--host-resolver-rules=MAP {REBOUND} 127.0.0.1"]
TOKEN = "a-token-of-sixteen-chars"
BUILD = 90_000  # ms: clone, build and start a container on a busy machine

# A first line, colours, markup, then more lines a second apart, then nothing for a long time.
TICKING = r"""echo first line
printf '\033[31mred\033[0m and \033[1;92mbold green\033[0m\n'
echo '<script>window.pwned=1</script><img src=x onerror="window.pwned=2">'
i=1
while [ $i -le 30 ]; do sleep 1; echo "tick $i"; i=$((i+1)); done
sleep 600
"""


@pytest.fixture
async def browser():
    """Debian's chromium; without it the run fails (make test installs it), it never skips."""
    missing = ("playwright is not installed (pip install -r requirements.txt)" if expect is None
               else None if os.access(CHROMIUM, os.X_OK)
               else f"{CHROMIUM} is missing (apt-get install chromium; `make test` installs it)")
    if missing:
        pytest.fail(missing)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@pytest.fixture
async def tab(browser):
    context = await browser.new_context(viewport={"width": 1200, "height": 600})
    yield await context.new_page()
    await context.close()


async def start(client, url: str, headers: dict | None = None) -> int:
    response = await client.post("/start", json={"url": url, "branch": "main"}, headers=headers)
    assert response.status == 201, await response.text()
    return (await response.json())["id"]


async def status_of(client, deployment_id: int) -> str:
    return (await (await client.get(f"/info/{deployment_id}")).json())["status"]


async def highest_tick(tab) -> int:
    ticks = re.findall(r"tick (\d+)", await tab.locator("#log").text_content())
    return max(map(int, ticks), default=0)


async def test_watch_a_deployment_live_and_cancel_it(client, repo, tab):
    url, _ = repo(TICKING)
    deployment_id = await start(client, url)
    try:
        await tab.goto(str(client.make_url("/")))
        row = tab.locator(f'tr[data-id="{deployment_id}"]')
        await expect(row).to_contain_text(re.compile("Pending|Running"))
        await row.locator("a").first.click()
        await expect(tab).to_have_url(str(client.make_url(f"/deployments/{deployment_id}")))
        log = tab.locator("#log")
        await expect(log).to_contain_text("first line", timeout=BUILD)
        await expect(tab.locator("#status")).to_have_text("Running")

        # New lines arrive while the page stays: no reload, the marker survives.
        await tab.evaluate("window.speedMarker = 'still here'")
        seen = await highest_tick(tab)
        await expect(log).to_contain_text(f"tick {seen + 2}", timeout=30_000)
        assert await tab.evaluate("window.speedMarker") == "still here"

        # Colours become classes; markup stays text and never runs.
        await expect(log.locator("span.ansi-red")).to_have_text("red")
        await expect(log.locator("span.ansi-bold.ansi-bright-green")).to_have_text("bold green")
        await expect(log).to_contain_text('<script>window.pwned=1</script><img src=x onerror=')
        assert await log.locator("script, img").count() == 0

        # The same through the live stream, with results added while the page is open.
        added = "\x1b[35mlive magenta\x1b[0m <img src=x onerror=\"window.pwned=3\">\n"
        assert (await client.post(f"/add_results/{deployment_id}", json={"results": added})).ok
        await expect(log.locator("span.ansi-magenta")).to_have_text("live magenta")
        await expect(log).to_contain_text('<img src=x onerror="window.pwned=3">')
        assert await log.locator("script, img").count() == 0
        assert await tab.evaluate("typeof window.pwned") == "undefined"

        await tab.locator("#cancel").click()
        await expect(tab.locator("#status")).to_have_text("Cancelled")
        await expect(tab.locator("#cancel")).to_be_hidden()
        await expect(log).to_contain_text("[speed] cancelled")
        await expect(tab.locator("#live")).to_be_hidden()
        assert await status_of(client, deployment_id) == "Cancelled"
    finally:
        await client.post(f"/cancel/{deployment_id}")


async def test_log_follows_the_end_only_while_the_reader_is_there(client, repo, tab):
    url, _ = repo("echo start\nsleep 600\n")
    deployment_id = await start(client, url)
    try:
        await tab.goto(str(client.make_url(f"/deployments/{deployment_id}")))
        log = tab.locator("#log")
        await expect(log).to_contain_text("start", timeout=BUILD)
        many = "".join(f"line {n}\n" for n in range(200))
        await client.post(f"/add_results/{deployment_id}", json={"results": many})
        await expect(log).to_contain_text("line 199")
        at_bottom = "l => l.scrollHeight - l.scrollTop - l.clientHeight < 4"
        assert await log.evaluate(at_bottom)
        # Scrolled up to read: new output no longer pulls the reader down.
        await log.evaluate("l => { l.scrollTop = 0; }")
        await client.post(f"/add_results/{deployment_id}", json={"results": "one more\n"})
        await expect(log).to_contain_text("one more")
        assert await log.evaluate("l => l.scrollTop") == 0
    finally:
        await client.post(f"/cancel/{deployment_id}")


async def test_token_field_authorises_cancel_and_redeploy(make_client, repo, tab):
    """With public reads, the page's token field is what lets its buttons act."""
    client = await make_client(auth__api_tokens=[TOKEN], auth__public_reads=True)
    authorised = {"Authorization": f"Bearer {TOKEN}"}
    url, _ = repo("echo waiting\nsleep 600\n")
    deployment_id = await start(client, url, authorised)
    started = [deployment_id]
    try:
        await tab.goto(str(client.make_url(f"/deployments/{deployment_id}")))
        token = tab.locator("#token")
        await expect(token).to_be_visible()
        await tab.locator("#cancel").click()
        await expect(tab.locator("#message")).to_contain_text("A valid API token is required")
        assert await status_of(client, deployment_id) in ("Pending", "Running")

        await token.fill(TOKEN)
        await tab.locator("#redeploy").click()
        await tab.wait_for_url(re.compile(rf"/deployments/(?!{deployment_id}$)\d+$"))
        redeployed = int(tab.url.rsplit("/", 1)[1])
        started.append(redeployed)
        assert redeployed > deployment_id
        # The token was kept in localStorage: the new page has it without typing.
        await expect(tab.locator("#token")).to_have_value(TOKEN)
        await tab.locator("#cancel").click()
        await expect(tab.locator("#status")).to_have_text("Cancelled")
        assert await status_of(client, redeployed) == "Cancelled"

        await tab.goto(str(client.make_url(f"/deployments/{deployment_id}")))
        await tab.locator("#cancel").click()
        await expect(tab.locator("#status")).to_have_text("Cancelled")
        assert await status_of(client, deployment_id) == "Cancelled"
    finally:
        for started_id in started:
            await client.post(f"/cancel/{started_id}", headers=authorised)


RENDER = """chunks => {
  const target = document.createElement("pre");
  const ansi = SpeedAnsi.renderer(target);
  chunks.forEach(chunk => ansi.write(chunk));
  return [...target.childNodes].map(n => [n.nodeName === "SPAN" ? n.className : "", n.textContent]);
}"""


# (chunks written one after another, what the log then holds: [span class or "", text] per node)
ANSI_CASES = [
    (["\x1b[31mred\x1b[0m plain"], [["ansi-red", "red"], ["", " plain"]]),
    (["\x1b[3", "1mcut\x1b", "[0m"], [["ansi-red", "cut"]]),  # sequences split between chunks
    (["\x1b[1;94mbold blue\x1b[22m blue\x1b[39m"],
     [["ansi-bright-blue ansi-bold", "bold blue"], ["ansi-bright-blue", " blue"]]),
    (["\x1b[38;5;31m256\x1b[48;2;1;2;3mrgb\x1b[m"], [["", "256"], ["", "rgb"]]),
    (["\x1b]0;title\x07\x1b[2K\x1b[1Aa\x1b(Bb\x1b=c\x00"], [["", "a"], ["", "b"], ["", "c"]]),
    (["cr\r", "\nlf\rx"], [["", "cr"], ["", "\nlf\nx"]]),
    (["<b>not bold</b>&amp;"], [["", "<b>not bold</b>&amp;"]]),
]


async def test_ansi_renderer_keeps_colours_and_drops_other_sequences(client, tab):
    await tab.goto(str(client.make_url("/")))
    await tab.add_script_tag(url="/static/ansi.js")
    for chunks, rendered in ANSI_CASES:
        assert await tab.evaluate(RENDER, chunks) == rendered, chunks


async def test_private_dashboard_signs_in_then_shows_and_cancels(make_client, repo, tab):
    """With private reads, Chromium is sent to sign in, comes back to the page it asked for, and
    its session (an HttpOnly, SameSite=Strict cookie) is enough for the page's live log and its
    Cancel button. Signing out ends the session: the same cookie put back is refused."""
    client = await make_client(auth__api_tokens=[TOKEN])
    authorised = {"Authorization": f"Bearer {TOKEN}"}
    url, _ = repo("echo signed-in-and-watching\nsleep 600\n")
    deployment_id = await start(client, url, authorised)
    await tab.goto(str(client.make_url(f"/deployments/{deployment_id}")))
    await expect(tab).to_have_url(re.compile(r"/login\?next="))
    await tab.fill("input[name=token]", "not-the-right-token-at-all")
    await tab.click("button:has-text('Sign in')")
    await expect(tab.locator("#login-error")).to_be_visible()
    await tab.fill("input[name=token]", TOKEN)
    await tab.click("button:has-text('Sign in')")
    await expect(tab).to_have_url(re.compile(rf"/deployments/{deployment_id}$"))
    await expect(tab.locator("#log")).to_contain_text("signed-in-and-watching", timeout=BUILD)
    cookies = await tab.context.cookies()
    assert [(c["httpOnly"], c["sameSite"]) for c in cookies] == [(True, "Strict")]
    assert TOKEN not in cookies[0]["value"]
    await tab.click("#cancel")
    await expect(tab.locator("#status")).to_have_text("Cancelled", timeout=30_000)
    info = await (await client.get(f"/info/{deployment_id}", headers=authorised)).json()
    assert info["status"] == "Cancelled"

    assert await tab.evaluate("fetch('/logout', {method: 'POST'}).then(r => r.ok)")
    assert await tab.context.cookies() == []
    await tab.context.add_cookies(cookies)  # a copy kept from before signing out
    await tab.goto(str(client.make_url(f"/deployments/{deployment_id}")))
    await expect(tab).to_have_url(re.compile(r"/login\?next="))


REBINDING_FETCHES = """async body => {
  const headers = {"Content-Type": "text/plain"};  // a "simple" request: no preflight
  const start = await fetch("/start", {method: "POST", headers, body});
  const list = await fetch("/deployments");
  return [start.status, list.status, await list.text()];
}"""


async def test_a_rebound_page_can_neither_start_nor_read(client, tab):
    """Attack: DNS rebinding. Chromium resolves rebound.test to 127.0.0.1 (--host-resolver-rules),
    so a page at http://rebound.test:P is same-origin with SPEED: its fetch of /start needs no
    preflight and it may read every answer. Asserts: the page itself, its POST /start and its
    GET /deployments all get 421, and nothing is created."""
    page = await tab.goto(f"http://{REBOUND}:{client.port}/")
    body = '{"url": "http://127.0.0.1:9/none.git", "branch": "main"}'
    start_status, list_status, listed = await tab.evaluate(REBINDING_FETCHES, body)
    assert (start_status, list_status) == (421, 421)
    assert page.status == 421
    assert "deployments" not in listed
    assert (await (await client.get("/deployments")).json())["deployments"] == []
