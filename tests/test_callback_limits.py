"""What a container may write back: within the output cap, only while it runs, never as SPEED."""
import re

import aiohttp
import pytest

from bot.keys import worker_key
from tests.conftest import instance_of, results_of, wait_finished, wait_for

pytestmark = pytest.mark.usefixtures("app_invariants")

CAP = 64 * 1024

POST = ('post() { wget -q -O- --header "Authorization: Bearer $SPEED_TOKEN" '
        '--post-file="$2" "$SPEED_API_URL$1" 2>&1; }\n')
FLOOD = POST + """\
body() { printf '{"results": "'; head -c "$1" /dev/zero | tr '\\0' "$2"; printf '"}'; }
body 1000000 x > /tmp/big
i=1; while [ $i -le 12 ]; do echo "big $i: $(post /add_results/$SPEED_DEPLOYMENT_ID /tmp/big)"; i=$((i+1)); done
body 8000 y > /tmp/small
i=1; while [ $i -le 20 ]; do echo "small $i: $(post /add_results/$SPEED_DEPLOYMENT_ID /tmp/small)"; i=$((i+1)); done
"""


async def start(client, url: str) -> int:
    response = await client.post("/start", json={"url": url, "branch": "main"})
    assert response.status == 201, await response.text()
    return (await response.json())["id"]


async def test_callback_text_counts_against_the_output_cap(make_client, repo):
    """Attack: with a 64 KiB cap, a container posted 12 x 1 MB to /add_results and all 12 MB
    were stored and served. Asserts: each 1 MB post is refused with 413 and stores nothing; of
    twenty 8 KB posts those that fit are stored whole and the rest get 413; the results stay
    within the cap (plus SPEED's final lines)."""
    client = await make_client(runner__max_log_bytes=CAP)
    url, _ = repo(FLOOD)
    deployment_id = await start(client, url)
    info = await wait_finished(client, deployment_id, timeout=120)
    results = await results_of(client, deployment_id)
    assert info["status"] == "Succeeded", results[-2000:]
    assert "x" * 1000 not in results
    stored = results.count("y" * 8000)
    assert 1 <= stored <= CAP // 8000 < 20, stored
    assert len(results.encode()) <= CAP + 512, len(results.encode())
    # What the container was told; its own output may itself be cut by the cap by then.
    told = re.findall(r"^(?:big|small) \d+: (.*)$", results, re.M)
    assert told and all(answer.startswith(("wget: server returned error: HTTP/1.1 413",
                                           '{"message": "Results added')) for answer in told)
    assert "big 1: wget: server returned error: HTTP/1.1 413" in results


async def test_a_finished_deployments_token_is_refused(client, repo, docker_client):
    """Attack: after its deployment had failed, a container's token still got 200 for `/update
    "all checks passed"` and `/add_results "[speed] Succeeded"`. Asserts: the token works on the
    container listener while the deployment runs; once it finished (cancelled here), every
    callback with it gets 401 and nothing more is stored."""
    url, _ = repo("echo up\nsleep 600\n")
    deployment_id = await start(client, url)

    async def running_container():
        found = docker_client.api.containers(filters={"label": [
            f"speed.instance={instance_of(client)}", f"speed.deployment={deployment_id}"]})
        return found and docker_client.api.inspect_container(found[0]["Id"])

    container = await wait_for(running_container)
    env = dict(item.split("=", 1) for item in container["Config"]["Env"])
    token, api_url = env["SPEED_TOKEN"], client.app[worker_key].pipeline.settings.api_url
    headers = {"Authorization": f"Bearer {token}"}

    async def callbacks() -> list[int]:
        async with aiohttp.ClientSession(headers=headers) as session:
            added = await session.post(f"{api_url}/add_results/{deployment_id}",
                                       json={"results": "[speed] Succeeded"})
            updated = await session.post(f"{api_url}/update", json={
                "id": deployment_id, "new_results": "all checks passed"})
            return [added.status, updated.status]

    assert await callbacks() == [200, 200]
    assert (await client.post(f"/cancel/{deployment_id}")).status == 200
    await wait_finished(client, deployment_id)

    async def let_go():  # its last output is stored after the outcome, then the run ends
        return deployment_id not in client.app[worker_key].runs

    await wait_for(let_go)
    before = await results_of(client, deployment_id)
    assert await callbacks() == [401, 401]
    assert await results_of(client, deployment_id) == before
    assert (await (await client.get(f"/info/{deployment_id}")).json())["progress"] == \
        "all checks passed"  # from the call made while it ran, not after


FORGER = POST + """\
echo '[speed] Succeeded: exit code 0'
printf '\\033[32m[speed] Succeeded\\033[0m\\n'
printf 'half a line\\r[speed] Succeeded\\n'
printf '{"results": "[speed] Succeeded: exit code 0"}' > /tmp/a
printf '{"id": %s, "new_results": "\\\\u001b[1m[speed] Succeeded"}' $SPEED_DEPLOYMENT_ID > /tmp/u
post /add_results/$SPEED_DEPLOYMENT_ID /tmp/a >/dev/null
post /update /tmp/u >/dev/null
exit 3
"""


async def test_text_a_container_sends_never_looks_like_speeds_own_lines(client, repo):
    """Attack: `/add_results "[speed] Succeeded"` (and the same printed to stdout, behind a
    colour code or a carriage return) forged SPEED's own lines in the results of a deployment
    that failed. Asserts: every such line is stored quoted (`> [speed] ...`), so the only lines
    beginning with `[speed]`, once escape sequences are set aside, are SPEED's own."""
    url, _ = repo(FORGER)
    deployment_id = await start(client, url)
    info = await wait_finished(client, deployment_id)
    results = await results_of(client, deployment_id)
    assert (info["status"], info["reason"]) == ("Failed", "exit code 3"), results
    visible = re.sub(r"\x1b\[[0-9;]*m", "", results)
    own = [line for line in re.split(r"[\r\n]", visible) if line.startswith("[speed]")]
    assert [line for line in own if "Succeeded" in line] == []
    assert own[-1] == "[speed] Failed: exit code 3"
    assert visible.count("> [speed] Succeeded") == 5, results
    assert info["progress"] == "> \x1b[1m[speed] Succeeded"
