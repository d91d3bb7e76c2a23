"""The dashboard without a browser: the list, one deployment's page, and the status badge."""
import re

from bot.keys import store_key
from storage import deployments as queries
from tests.conftest import wait_finished, wait_for

ALPHA = "https://github.com/acme/alpha.git"
BETA = "https://github.com/acme/beta.git"


async def record(client, url: str, status: str, branch: str = "main", **fields) -> int:
    """A finished deployment written straight to the store (the worker only takes Pending ones)."""
    deployment = await client.app[store_key].run(queries.create, url, branch, status=status,
                                                 **fields)
    return deployment.id


async def start(client, url: str, headers: dict | None = None) -> int:
    response = await client.post("/start", json={"url": url, "branch": "main"}, headers=headers)
    assert response.status == 201, await response.text()
    return (await response.json())["id"]


async def worker_serving(client) -> None:
    """Wait until the worker reconciled what it found at start-up: it leaves recorded rows alone."""
    await wait_finished(client, await start(client, "http://127.0.0.1:9/none.git"))


def rows(html: str) -> list[tuple[int, str]]:
    """(id, status) of each deployment the list shows, in order."""
    return [(int(i), s) for i, s in re.findall(r'<tr data-id="(\d+)" data-status="(\w+)">', html)]


async def page(client, path: str) -> str:
    response = await client.get(path)
    assert response.status == 200, await response.text()
    assert response.content_type == "text/html"
    return await response.text()


async def test_list_shows_deployments_newest_first(client):
    first = await record(client, ALPHA, "Succeeded", commit="a" * 40, trigger="push")
    second = await record(client, BETA, "Failed", branch="release/1.x", reason="exit code 3")
    third = await record(client, ALPHA, "Cancelled", trigger="redeploy")
    html = await page(client, "/")
    assert rows(html) == [(third, "Cancelled"), (second, "Failed"), (first, "Succeeded")]
    assert 'class="status status-failed">Failed</span>' in html
    assert "github.com/acme/beta" in html and "release/1.x" in html and "exit code 3" in html
    assert ">aaaaaaa<" in html and "a" * 8 not in html.split("<tbody>")[1]
    assert "push" in html and "redeploy" in html and "manual" in html


async def test_list_filters_by_status_and_repository(client):
    alpha_ok = await record(client, ALPHA, "Succeeded")
    beta_failed = await record(client, BETA, "Failed")
    alpha_failed = await record(client, ALPHA, "Failed")
    assert rows(await page(client, "/?status=Failed")) == [(alpha_failed, "Failed"),
                                                            (beta_failed, "Failed")]
    assert [i for i, _ in rows(await page(client, "/?repo=acme/alpha"))] == [alpha_failed, alpha_ok]
    html = await page(client, "/?status=succeeded&repo=beta")
    assert rows(html) == [] and "No deployments match these filters." in html
    # The form shows the filters in use.
    html = await page(client, "/?status=Failed&repo=alpha")
    assert "<option selected>Failed</option>" in html and 'name="repo" value="alpha"' in html
    assert (await client.get("/?status=Finished")).status == 400
    assert (await client.get("/?before=x")).status == 400


async def test_list_pages_through_older_deployments(client):
    ids = [await record(client, ALPHA, "Succeeded") for _ in range(5)]
    html = await page(client, "/?limit=2")
    assert [i for i, _ in rows(html)] == [ids[4], ids[3]]
    older = re.search(r'<a href="([^"]+)" rel="next">Older', html).group(1).replace("&amp;", "&")
    assert older == f"/?limit=2&before={ids[3]}"
    html = await page(client, older)
    assert [i for i, _ in rows(html)] == [ids[2], ids[1]] and "Newest" in html
    html = await page(client, f"/?limit=2&before={ids[1]}")
    assert [i for i, _ in rows(html)] == [ids[0]] and 'rel="next"' not in html
    # Filters carry over to the next page.
    await record(client, BETA, "Failed")
    html = await page(client, "/?status=Succeeded&limit=1")
    assert f'href="/?status=Succeeded&amp;limit=1&amp;before={ids[4]}" rel="next"' in html


async def test_pending_says_why_and_the_list_refreshes_only_while_active(make_client, repo):
    client = await make_client(runner__max_concurrent=1)
    await record(client, ALPHA, "Succeeded")
    quiet = await page(client, "/")
    assert 'data-active="false"' in quiet and 'http-equiv="refresh"' not in quiet
    url, _ = repo("echo holding\nsleep 600\n")
    blocker, queued = await start(client, url), await start(client, url)
    try:
        async def blocker_running():
            return (await (await client.get(f"/info/{blocker}")).json())["status"] == "Running"

        await wait_for(blocker_running)
        busy = await page(client, "/")
        assert 'data-active="true"' in busy and 'http-equiv="refresh"' in busy
        assert rows(busy)[:2] == [(queued, "Pending"), (blocker, "Running")]
        assert "position 1 in the queue" in busy
        waiting = await page(client, f"/deployments/{queued}")
        assert "Waiting" in waiting and "position 1 in the queue; 1 of 1 deployments" in waiting
    finally:
        for deployment_id in (queued, blocker):
            await client.post(f"/cancel/{deployment_id}")
    assert 'data-active="false"' in await page(client, "/")


async def test_deployment_page_shows_phases_and_results(client, repo):
    url, commit = repo("echo hello from the page\n")
    deployment_id = await start(client, url)
    await wait_finished(client, deployment_id)
    response = await client.get(f"/deployments/{deployment_id}")
    html = await response.text()
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert 'id="status">Succeeded</span>' in html and commit in html
    for phase in ("clone", "build", "run"):
        assert re.search(rf'data-phase="{phase}">\d+(\.\d)? (s|min)', html), phase
    assert "hello from the page\n" in html and "[speed] Succeeded: exit code 0" in html
    after = int(re.search(r'data-after="(\d+)"', html).group(1))
    assert after > 0
    # The page's log resumes the live stream exactly where the rendered results end.
    events = await (await client.get(f"/deployments/{deployment_id}/events?after={after}")).text()
    assert "event: log" not in events and "event: end" in events
    assert 'id="token"' not in html
    assert (await client.get("/deployments/999")).status == 404


async def test_what_a_container_prints_is_escaped_in_list_and_page(client, repo):
    url, _ = repo("echo '<script>alert(1)</script>'\n"
                  'report=\'"new_results": "<script>alert(2)</script>"\'\n'
                  'wget -q -O- --header "Authorization: Bearer $SPEED_TOKEN" '
                  '--post-data "{\\"id\\": $SPEED_DEPLOYMENT_ID, $report}" "$SPEED_API_URL/update"\n')
    deployment_id = await start(client, url)
    info = await wait_finished(client, deployment_id)
    assert info["progress"] == "<script>alert(2)</script>"
    listed = await page(client, "/")
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in listed and "<script>alert" not in listed
    shown = await page(client, f"/deployments/{deployment_id}")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in shown
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in shown and "<script>alert" not in shown


async def test_page_offers_a_token_field_when_tokens_are_configured(make_client):
    client = await make_client(auth__api_tokens=["a-token-of-sixteen-chars"],
                               auth__public_reads=True)
    deployment_id = await record(client, ALPHA, "Failed")
    html = await page(client, f"/deployments/{deployment_id}")
    assert '<input type="password" id="token"' in html


async def badge(client, path: str) -> str:
    response = await client.get(path)
    assert response.status == 200
    assert response.content_type == "image/svg+xml"
    assert response.headers["Cache-Control"] == "no-cache"
    return await response.text()


async def test_badge_shows_the_latest_deployment_of_a_repository(client):
    assert ">unknown</text>" in await badge(client, "/badge/acme/alpha.svg")
    await record(client, ALPHA, "Succeeded", repo_full_name="acme/alpha")
    svg = await badge(client, "/badge/acme/alpha.svg")
    assert svg.startswith("<svg") and ">deploy</text>" in svg
    assert ">passing</text>" in svg and 'fill="#4c1"' in svg
    await record(client, ALPHA, "Failed", repo_full_name="acme/alpha")
    svg = await badge(client, "/badge/Acme/Alpha.svg")  # GitHub names ignore case
    assert ">failing</text>" in svg and 'fill="#e05d44"' in svg
    await record(client, ALPHA, "Cancelled", repo_full_name="acme/alpha")
    assert ">cancelled</text>" in await badge(client, "/badge/acme/alpha.svg")
    await worker_serving(client)
    await record(client, BETA, "Running", repo_full_name="acme/beta")
    assert ">running</text>" in await badge(client, "/badge/acme/beta.svg")
    assert ">unknown</text>" in await badge(client, "/badge/acme/gamma.svg")


async def test_badge_follows_a_branch_when_asked(client):
    await record(client, ALPHA, "Succeeded", repo_full_name="acme/alpha", branch="main")
    await record(client, ALPHA, "Failed", repo_full_name="acme/alpha", branch="feature/x")
    assert ">failing</text>" in await badge(client, "/badge/acme/alpha.svg")
    assert ">passing</text>" in await badge(client, "/badge/acme/alpha.svg?branch=main")
    assert ">failing</text>" in await badge(client, "/badge/acme/alpha.svg?branch=feature/x")
    assert ">unknown</text>" in await badge(client, "/badge/acme/alpha.svg?branch=other")


async def test_static_files_are_versioned_and_nothing_else_is_served(client):
    html = await page(client, "/")
    css = re.search(r'href="(/static/speed\.css\?v=\w+)"', html).group(1)
    response = await client.get(css)
    assert response.status == 200 and response.content_type == "text/css"
    assert "immutable" in response.headers["Cache-Control"]
    etag = response.headers["ETag"]
    assert (await client.get("/static/speed.css", headers={"If-None-Match": etag})).status == 304
    script = await client.get(re.search(r'src="(/static/list\.js\?v=\w+)"', html).group(1))
    assert script.content_type == "text/javascript"
    for path in ("/static/nothing.js", "/static/", "/static/../pages.py", "/static/%2e%2e%2fapp.py"):
        missing = await client.get(path)
        assert missing.status == 404 and (await missing.json())["error"], path
