"""The `speed` command-line client, run as a real process against a live SPEED."""
import asyncio
import contextlib
import dataclasses
import os
import pathlib
import re
import sys
import tty

import pytest
from aiohttp import ClientSession, web

from speedcli.progress import phase_of
from tests.conftest import free_port, results_of, wait_finished, wait_for
from tests.tcp_proxy import HoldingProxy

ROOT = pathlib.Path(__file__).resolve().parent.parent
TIMEOUT = 120
PHASES = ["queued", "cloning", "building", "running"]
TOKEN = "cli-test-token-0123456789"
NOWHERE = "http://127.0.0.1:9/none.git"  # allowed, and fails at clone without any Docker work
DURATION = r"(\d+\.\ds|\d+m\d\ds|\d+h\d\dm)"


@dataclasses.dataclass
class Ran:
    code: int
    out: str
    err: str


def base_url(server) -> str:
    """Where a subprocess reaches a test client's or test server's app."""
    return str(server.make_url("")).rstrip("/")


async def spawn(server: str, *args: str, stderr=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, **env: str):
    """`python -m speedcli ARGS` with SPEED_URL=server; no SPEED_* from the outer environment."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SPEED_")}
    environment.update(SPEED_URL=server, **env)
    # Not subprocess.run: the SPEED under test runs in this very event loop.
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "speedcli", *args, cwd=ROOT, env=environment,
        stdin=asyncio.subprocess.DEVNULL, stdout=stdout, stderr=stderr)


@contextlib.asynccontextmanager
async def running(server: str, *args: str, **options):
    """The client as a process, killed if a failing test leaves it running."""
    process = await spawn(server, *args, **options)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def speed(server: str, *args: str, **env: str) -> Ran:
    async with running(server, *args, **env) as process:
        out, err = await asyncio.wait_for(process.communicate(), TIMEOUT)
    return Ran(process.returncode, out.decode(), err.decode())


async def read_until(stream: asyncio.StreamReader, wanted) -> list[str]:
    """Lines read up to and including the first one matching `wanted`."""
    lines = []
    while not lines or not wanted(lines[-1]):
        line = await asyncio.wait_for(stream.readline(), TIMEOUT)
        assert line, f"output ended before the expected line; got {lines}"
        lines.append(line.decode().rstrip("\n"))
    return lines


def phase_line(deployment_id: int, phases=PHASES) -> re.Pattern:
    return re.compile(rf"speed: deployment {deployment_id} ({'|'.join(phases)}) "
                      rf"\({DURATION}\)(: .*)?")


def final_line(deployment_id: int, status: str, reason: str) -> re.Pattern:
    return re.compile(rf"speed: deployment {deployment_id} {status} after {DURATION} "
                      rf"\({re.escape(reason)}\)")


async def start(client, url: str) -> int:
    response = await client.post("/start", json={"url": url, "branch": "main"})
    assert response.status == 201, await response.text()
    return (await response.json())["id"]


async def test_start_follow_streams_the_log_and_exits_0(client, repo):
    url, _ = repo("echo hello-from-the-container\n")
    ran = await speed(base_url(client), "start", url, "main", "--follow")
    first, _, log = ran.out.partition("\n")
    deployment_id = int(first)
    assert ran.code == 0, ran.err
    assert "hello-from-the-container\n" in log
    assert log == await results_of(client, deployment_id)
    *phases, last = ran.err.splitlines()
    assert final_line(deployment_id, "Succeeded", "exit code 0").fullmatch(last), ran.err
    # Piped: plain lines, one per phase change, in the order a deployment goes through them.
    matches = [phase_line(deployment_id).fullmatch(line) for line in phases]
    assert all(matches), ran.err
    seen = [m[1] for m in matches]
    assert seen == sorted(set(seen), key=PHASES.index)
    assert "\r" not in ran.err


async def test_follow_of_a_failing_deployment_exits_1(client, repo):
    url, _ = repo("echo about to fail\nexit 3\n")
    server = base_url(client)
    ran = await speed(server, "start", url, "main", "-f")
    deployment_id = int(ran.out.split("\n", 1)[0])
    assert ran.code == 1, ran.err
    assert "about to fail\n" in ran.out
    assert final_line(deployment_id, "Failed", "exit code 3").fullmatch(ran.err.splitlines()[-1])
    # `logs --follow` of the finished deployment: the whole log, and the same exit code.
    again = await speed(server, "logs", str(deployment_id), "--follow")
    assert (again.code, again.out) == (1, await results_of(client, deployment_id))


async def test_follow_shows_the_queue_and_running_and_exits_2_when_cancelled(make_client, repo):
    client = await make_client(runner__max_concurrent=1)
    server = base_url(client)
    blocker = int((await speed(server, "start", repo("echo holding\nsleep 600\n")[0], "main")).out)

    async def blocker_running():
        return (await (await client.get(f"/info/{blocker}")).json())["status"] == "Running"

    await wait_for(blocker_running)
    async with running(server, "start", repo("echo ready\nsleep 600\n")[0], "main",
                       "--follow") as process:
        deployment_id = int((await read_until(process.stdout, lambda line: True))[0])
        queued = await read_until(process.stderr, lambda line: True)
        assert phase_line(deployment_id, ["queued"]).fullmatch(queued[0]), queued
        assert queued[0].endswith(": position 1 in the queue; 1 of 1 deployments running "
                                  "(runner.max_concurrent)")

        cancelled = await speed(server, "cancel", str(blocker))
        assert cancelled.code == 0 and re.search(r"^status: +Cancelled$", cancelled.out, re.M)
        await read_until(process.stdout, lambda line: line == "ready")
        lines = await read_until(process.stderr, phase_line(deployment_id, ["running"]).fullmatch)
        assert all(phase_line(deployment_id, ["cloning", "building"]).fullmatch(line)
                   for line in lines[:-1]), lines
        # A progress report changes the status but not the phase: no new phase line.
        update = {"id": deployment_id, "new_results": "halfway"}
        assert (await client.post("/update", json=update)).status == 200
        await read_until(process.stdout, lambda line: line == "halfway")

        assert (await speed(server, "cancel", str(deployment_id))).code == 0
        _, rest = await asyncio.wait_for(process.communicate(), TIMEOUT)
        assert process.returncode == 2
        assert final_line(deployment_id, "Cancelled", "cancelled").fullmatch(rest.decode().strip())
    again = await speed(server, "cancel", str(deployment_id))
    assert (again.code, again.err) == (3, "speed: 409: Deployment is already Cancelled\n")


async def test_info_results_logs_and_list_with_filters(client, repo):
    server = base_url(client)
    good_url, good_commit = repo("echo fine\n")
    bad_url, _ = repo("echo broken\nexit 4\n")
    good = int((await speed(server, "start", good_url, "main")).out)
    bad = int((await speed(server, "start", bad_url, "main")).out)
    await wait_finished(client, good)
    await wait_finished(client, bad)

    info = await speed(server, "info", str(bad))
    assert info.code == 0  # whatever the deployment's outcome
    lines = info.out.splitlines()
    parsed = [re.fullmatch(r"(\w+):( +)(\S.*)", line) for line in lines]
    assert all(parsed), info.out
    assert len({m.start(3) for m in parsed}) == 1, "values are aligned in one column"
    fields = {m[1]: m[3] for m in parsed}
    assert (fields["id"], fields["status"], fields["exit_code"]) == (str(bad), "Failed", "4")
    assert fields["repo_name"] == bad_url and fields["reason"] == "exit code 4"
    assert re.fullmatch(r"clone \S+s, build \S+s, run \S+s", fields["phases"])
    assert "waiting_reason" not in fields

    expected = await results_of(client, good)
    assert "fine\n" in expected
    assert (await speed(server, "results", str(good))).out == expected
    assert (await speed(server, "logs", str(good))).out == expected

    listed = (await speed(server, "list")).out.splitlines()
    assert listed[0].split() == ["ID", "STATUS", "REPO", "BRANCH", "COMMIT", "TRIGGER",
                                 "CREATED", "DURATION"]
    rows = {line.split()[0]: line for line in listed[1:]}
    assert list(rows) == [str(bad), str(good)]
    cells = rows[str(good)].split()
    assert cells[:6] == [str(good), "Succeeded", good_url, "main", good_commit[:7], "manual"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", cells[6]) and re.fullmatch(DURATION, cells[8])
    assert rows[str(bad)].index("Failed") == listed[0].index("STATUS")

    def ids(ran: Ran) -> list[str]:
        assert ran.code == 0, ran.err
        return [line.split()[0] for line in ran.out.splitlines()[1:]]

    assert ids(await speed(server, "list", "--status", "Failed")) == [str(bad)]
    assert ids(await speed(server, "list", "--repo", good_url)) == [str(good)]
    assert ids(await speed(server, "list", "--limit", "1")) == [str(bad)]
    refused = await speed(server, "list", "--status", "Bogus")
    assert refused.code == 3 and refused.err.startswith("speed: 400: 'status' must be one of ")
    assert refused.err.count("\n") == 1


async def test_redeploy_follow_runs_the_same_commit_again(client, repo):
    url, commit = repo('echo "at $SPEED_COMMIT"\n')
    server = base_url(client)
    first = await start(client, url)
    await wait_finished(client, first)
    ran = await speed(server, "redeploy", str(first), "--follow")
    second = int(ran.out.split("\n", 1)[0])
    assert ran.code == 0 and second != first
    assert f"at {commit}\n" in ran.out
    info = await speed(server, "info", str(second))
    assert re.search(r"^trigger: +redeploy$", info.out, re.M)


def cutting_proxy(upstream: str, cut: str) -> tuple[web.Application, dict]:
    """SPEED's event stream, but the first connection is cut right after its first log event."""
    seen = {"queries": [], "cut_after": None, "logs_after_cut": 0}

    async def events(request: web.Request) -> web.StreamResponse:
        seen["queries"].append(request.query_string)
        first = len(seen["queries"]) == 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        async with ClientSession() as session, session.get(upstream + request.path_qs) as source:
            kind, event_id = None, None
            async for line in source.content:
                await response.write(line)
                if line.startswith(b"event: "):
                    kind = line.strip().removeprefix(b"event: ")
                elif line.startswith(b"id: "):
                    event_id = line.strip().removeprefix(b"id: ").decode()
                elif line == b"\n" and kind == b"log":
                    if not first:
                        seen["logs_after_cut"] += 1
                    elif cut == "abort":
                        seen["cut_after"] = event_id
                        request.transport.abort()
                        return response
                    else:
                        seen["cut_after"] = event_id
                        return response  # a clean end of the response, but no `end` event
        return response

    app = web.Application()
    app.router.add_get("/deployments/{id}/events", events)
    return app, seen


@pytest.mark.parametrize("cut", ["abort", "eof"])
async def test_follow_reconnects_after_the_last_log_it_received(client, repo, aiohttp_server,
                                                                 cut):
    url, _ = repo("echo one\necho two\n")
    deployment_id = await start(client, url)
    await wait_finished(client, deployment_id)
    app, seen = cutting_proxy(base_url(client), cut)
    proxy = await aiohttp_server(app)
    ran = await speed(base_url(proxy), "logs", str(deployment_id), "--follow")
    assert ran.code == 0, ran.err
    assert ran.out == await results_of(client, deployment_id)  # nothing lost, nothing twice
    assert seen["queries"] == ["", f"after={seen['cut_after']}"]
    assert seen["logs_after_cut"] > 0


async def test_follow_gives_up_after_a_few_reconnections(aiohttp_server):
    requests = []

    async def events(request: web.Request) -> web.StreamResponse:
        requests.append(request.query_string)
        if len(requests) > 1:
            return web.json_response({"error": "restarting"}, status=503)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'event: status\ndata: {"status": "Running", "phases": {}}\n\n')
        return response

    app = web.Application()
    app.router.add_get("/deployments/{id}/events", events)
    server = base_url(await aiohttp_server(app))
    ran = await speed(server, "logs", "7", "--follow")
    assert ran.code == 3
    assert ran.err.splitlines()[-1] == (f"speed: lost the connection to SPEED at {server} "
                                        "(5 reconnection attempts): 503: restarting")
    assert "Traceback" not in ran.err
    assert requests == [""] * 6  # no log arrived, so there is nothing to resume after


async def test_start_whose_answer_is_lost_is_sent_again_and_queues_one_deployment(client):
    """Fault: SPEED queues the deployment but the answer never reaches the client (the
    connection is cut off). Asserts: `speed start` sends it again with the same Idempotency-Key,
    prints the one deployment's id, and SPEED queued only that one."""
    proxy = HoldingProxy(base_url(client))
    proxy.lose_answer(lambda head, body: head.startswith(b"POST /start "))
    try:
        ran = await speed(proxy.base_url, "start", NOWHERE, "main")
    finally:
        proxy.close()
    assert (ran.code, proxy.lost) == (0, 1), ran.err
    listed = (await (await client.get("/deployments")).json())["deployments"]
    assert [d["id"] for d in listed] == [int(ran.out)]


@pytest.mark.parametrize("answers, code", [
    pytest.param([503, 502, 201], 0, id="gateway-errors-then-queued"),
    pytest.param([503, 503, 503], 3, id="gives-up-after-three"),
    pytest.param([500], 3, id="a-500-is-not-sent-again"),
    pytest.param([422], 3, id="a-refusal-is-not-sent-again")])
async def test_start_is_sent_again_only_while_its_answer_may_be_lost(aiohttp_server, answers,
                                                                     code):
    """A server answering /start as listed: `speed start` sends it again after a gateway's
    502/503/504 (SPEED may not have got it), with the same Idempotency-Key, at most three times
    in all; an answer SPEED gave (500, 422) is final."""
    keys = []

    async def start(request):
        keys.append(request.headers.get("Idempotency-Key"))
        status = answers[len(keys) - 1]
        body = {"id": 7} if status == 201 else {"error": f"answered {status}"}
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_post("/start", start)
    ran = await speed(base_url(await aiohttp_server(app)), "start", NOWHERE, "main")
    assert ran.code == code, ran.err
    assert len(keys) == len(answers) and len(set(keys)) == 1 and keys[0], keys
    assert ran.out == ("7\n" if code == 0 else "")


async def test_api_token_from_the_flag_or_the_environment(make_client):
    client = await make_client(auth__api_tokens=[TOKEN])
    server = base_url(client)
    missing = "speed: 401: A valid API token is required (Authorization: Bearer <token>)\n"
    refused = await speed(server, "start", NOWHERE, "main")
    assert (refused.code, refused.out, refused.err) == (3, "", missing)
    wrong = await speed(server, "start", NOWHERE, "main", "--token", "wrong")
    assert (wrong.code, wrong.err) == (3, missing)

    started = await speed(server, "start", NOWHERE, "main", "--token", TOKEN)
    assert started.code == 0, started.err
    first = int(started.out)
    from_env = await speed(server, "redeploy", str(first), SPEED_API_TOKEN=TOKEN)
    assert from_env.code == 0 and int(from_env.out) == first + 1
    # The flag wins over the environment, before or after the command.
    flag = await speed(server, "--token", TOKEN, "redeploy", str(first),
                       SPEED_API_TOKEN="wrong")
    assert flag.code == 0 and int(flag.out) == first + 2
    assert (await speed(server, "redeploy", str(first), SPEED_API_TOKEN="wrong")).err == missing


async def test_unreachable_server_is_one_line_and_exit_3():
    server = f"http://127.0.0.1:{free_port()}"
    for args in (["info", "1"], ["logs", "1", "--follow"], ["start", NOWHERE, "main"]):
        ran = await speed(server, *args)
        assert (ran.code, ran.out) == (3, "")
        assert ran.err == f"speed: cannot reach SPEED at {server}: Connection refused\n"


async def test_unknown_id_prints_the_servers_404(client):
    server = base_url(client)
    for args in (["info", "999"], ["results", "999"], ["logs", "999", "-f"], ["cancel", "999"],
                 ["redeploy", "999", "--follow"]):
        ran = await speed(server, *args)
        assert (ran.code, ran.out, ran.err) == (3, "", "speed: 404: Deployment not found\n"), args


async def test_usage_errors_exit_3():
    ran = await speed("http://127.0.0.1:9", "info", "seven")
    assert ran.code == 3 and ran.err.startswith("usage: speed info")
    assert "invalid int value: 'seven'" in ran.err
    assert (await speed("http://127.0.0.1:9")).code == 3
    for bad in ("ftp://example", "http://", "http://[::1", "http://host:port"):
        ran = await speed(bad, "info", "1")
        assert (ran.code, ran.err) == (
            3, f"speed: the server URL must look like http(s)://HOST[:PORT], not {bad!r}\n")


def _pty_contents(master: int) -> asyncio.Future:
    """Everything written to the terminal, once its last writer closed it."""
    loop = asyncio.get_running_loop()
    done, chunks = loop.create_future(), bytearray()

    def readable():
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: every writer is gone
            data = b""
        if data:
            chunks.extend(data)
            return
        loop.remove_reader(master)
        done.set_result(bytes(chunks))

    loop.add_reader(master, readable)
    return done


async def test_progress_on_a_terminal_is_one_rewritten_line(client, repo):
    url, _ = repo("echo on-a-terminal\n")
    master, terminal = os.openpty()
    tty.setraw(terminal)  # no \n -> \r\n translation: every \r seen is the client's
    try:
        contents = _pty_contents(master)
        async with running(base_url(client), "start", url, "main", "--follow",
                           stderr=terminal) as process:
            os.close(terminal)
            out, _ = await asyncio.wait_for(process.communicate(), TIMEOUT)
        err = (await asyncio.wait_for(contents, TIMEOUT)).decode()
    finally:
        os.close(master)
    deployment_id = int(out.decode().split("\n", 1)[0])
    assert process.returncode == 0 and "on-a-terminal\n" in out.decode()
    assert "\r" in err and err.count("\n") == 1, repr(err)
    drawn = [part.strip() for part in err.split("\r") if part.strip()]
    assert final_line(deployment_id, "Succeeded", "exit code 0").fullmatch(drawn[-1]), repr(err)
    assert all(phase_line(deployment_id, PHASES + ["Succeeded"]).fullmatch(part)
               for part in drawn[:-1]), repr(err)


def test_a_rollbacks_first_phase_is_rolling_back_not_cloning():
    """Found by a hostile user: `speed rollback` said "cloning" while it clones nothing."""
    running = {"status": "Running", "phases": {"clone": None, "build": None}}
    assert phase_of({**running, "trigger": "rollback"}) == "rolling back"
    assert phase_of({**running, "trigger": "api"}) == "cloning"
