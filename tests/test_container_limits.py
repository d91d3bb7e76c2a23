"""Hostile containers are held by their limits: memory, processes, time, and output."""
import contextlib
import glob
import os
import re
import time

import docker
import pytest

from tests.conftest import results_of, wait_finished
from tests.process import speed_processes

# After every test the invariant of tests/invariants.py holds.
pytestmark = pytest.mark.usefixtures("app_invariants")


async def start(client, url: str) -> int:
    response = await client.post("/start", json={"url": url, "branch": "main"})
    assert response.status == 201
    return (await response.json())["id"]


async def test_memory_hog_fails_as_out_of_memory(make_client, repo):
    """Fault: a container exceeds its 32 MB memory limit. Asserts: the deployment is Failed with a
    reason starting 'out of memory'."""
    client = await make_client(runner__memory="32m")
    # tail keeps a line-less stream in memory until the limit kills it.
    url, _ = repo("head -c 300000000 /dev/zero | tail -c 250000000 > /dev/null\n")
    info = await wait_finished(client, await start(client, url))
    assert info["status"] == "Failed"
    assert info["reason"].startswith("out of memory")


async def test_fork_bomb_is_held_by_the_pids_limit(make_client, repo):
    """Fault: a fork bomb under a 32-process limit and a 15 s timeout. Asserts: the deployment is
    Failed, the bomb met the limit ("can't fork"), and /healthz still answers 200 (the bot kept
    serving). It ends by the timeout, or sooner when the script's own shell is the one the
    limit refuses a fork (exit code 2): both show the limit holding."""
    client = await make_client(runner__pids=32, runner__timeout=15)
    # exec: the script's own last command needs no fork, which the bomb may leave it none of.
    url, _ = repo("bomb() { bomb | bomb & }\nbomb\nexec sleep 600\n")
    deployment_id = await start(client, url)
    info = await wait_finished(client, deployment_id, timeout=40)
    assert info["status"] == "Failed"
    assert info["reason"] in ("timed out after 15 s", "exit code 2"), info["reason"]
    assert "can't fork" in await results_of(client, deployment_id)
    # The bot kept serving throughout.
    assert (await client.get("/healthz")).status == 200


async def test_flood_of_output_is_capped_and_the_exit_code_decides(make_client, repo):
    """Fault: a container prints 50 MB against a 100 kB log cap, then exits 0. Asserts: Succeeded
    (from the exit code), under 110,000 bytes stored, and a truncation marker in them."""
    client = await make_client(runner__max_log_bytes=100_000)
    url, _ = repo("yes 'a line of output that repeats' | head -c 50000000\nexit 0\n")
    deployment_id = await start(client, url)
    info = await wait_finished(client, deployment_id, timeout=120)
    results = await results_of(client, deployment_id)
    assert info["status"] == "Succeeded"
    assert len(results.encode()) < 110_000
    assert "[output truncated:" in results


GIGABYTE = 1_000_000_000
LOG_CAP = 1_000_000  # runner.max_log_bytes for the gigabyte flood
ENGINE_LOG_CAP = 2 * 20 * 1024 * 1024  # Docker's json-file: max-file 2 x max-size 20m
MEMORY_GROWTH = 64 * 1024 * 1024  # SPEED's allowed peak growth, far below the output
DATABASE_SIZE = 16 * 1024 * 1024  # the database (with its WAL) after storing LOG_CAP bytes
# Lines of 16 KiB (with the newline): Docker's frame size; longer lines cost the engine no more.
FLOOD_SCRIPT = (f'yes "$(head -c 16383 /dev/zero | tr "\\0" a)" | head -c {GIGABYTE} && exit 3\n'
                'exit 9\n')  # 3 only if head wrote the whole gigabyte


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (peak resident) of a process, in KiB."""
    fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}


def files_bytes(pattern: str) -> int:
    """The total size of the files matching pattern (one may be rotated away meanwhile)."""
    total = 0
    for path in glob.glob(pattern):
        with contextlib.suppress(FileNotFoundError):
            total += os.path.getsize(path)
    return total


@pytest.mark.slow
@pytest.mark.serial  # a gigabyte through the engine, sampled every 0.1 s: not beside other work
def test_a_gigabyte_of_output_is_capped_everywhere_and_the_exit_code_decides(
        tmp_path, docker_client, base_image, repo):
    """Fault: a container prints 1 GB (16 KiB lines) against a 1 MB log cap, then exits 3; SPEED
    runs as a real process. Asserts: Failed with exit code 3 (the exit code decides, not the
    flood); the stored results hold at most the cap before a truncation marker; SPEED's peak
    memory (VmHWM) grew by under 64 MiB and its database stays under 16 MiB; the engine's json-file
    log of the container, sampled all through the run until the outcome, never exceeds 2 x 20 MiB
    although it rotated (so the gigabyte did pass through the engine), and the container is
    configured so. The invariant holds afterwards (tests/invariants.py)."""
    with speed_processes(tmp_path, docker_client) as make:
        bot = make(max_log_bytes=LOG_CAP, timeout=300)
        url, _ = repo(FLOOD_SCRIPT)
        memory_before = memory_kib(bot.process.pid)
        began = time.monotonic()
        deployment_id = bot.start_deployment(url)
        labels = [f"speed.instance={bot.instance}", f"speed.deployment={deployment_id}"]
        log_path, log_config, engine_peak, rotated = None, None, 0, False
        deadline = time.monotonic() + 240
        while True:
            info = bot.info(deployment_id)
            if log_path is None:
                found = docker_client.api.containers(all=True, filters={"label": labels})
                # Listed, then gone before it was inspected (seen once in CI): sampled again at
                # the next round; a container that really vanished fails the outcome below.
                with contextlib.suppress(docker.errors.NotFound):
                    if found:
                        inspected = docker_client.api.inspect_container(found[0]["Id"])
                        # Empty until the container starts: a created one has no log file yet.
                        log_path = inspected["LogPath"] or None
                        log_config = inspected["HostConfig"]["LogConfig"]
            if log_path:  # sampled until the outcome is recorded; the container goes after it
                engine_peak = max(engine_peak, files_bytes(log_path + "*"))
                rotated = rotated or os.path.exists(log_path + ".1")
            if info["status"] in ("Succeeded", "Failed", "Cancelled"):
                break
            assert time.monotonic() < deadline, f"not finished within 240 s: {info}"
            time.sleep(0.1)  # the sampling period, not a wait for a race
        elapsed = time.monotonic() - began
        memory_after = memory_kib(bot.process.pid)
        results = bot.results(deployment_id)
        database = files_bytes(str(bot.db_path) + "*")

    assert (info["status"], info["exit_code"]) == ("Failed", 3), (info, results[-500:])
    assert info["reason"] == "exit code 3"
    marker = re.search(r"\n\[output truncated: at least (\d+) bytes over the (\d+)-byte limit were not "
                       r"stored\]\n", results)
    assert marker, results[-500:]
    assert int(marker.group(2)) == LOG_CAP and int(marker.group(1)) > 0
    assert len(results[:marker.start()].encode()) <= LOG_CAP
    assert len(results.encode()) < LOG_CAP + 1024  # the marker and the final status line
    growth = (memory_after["VmHWM"] - memory_before["VmHWM"]) * 1024
    assert growth < MEMORY_GROWTH, f"SPEED's peak memory grew by {growth} bytes"
    assert database < DATABASE_SIZE, f"the database takes {database} bytes"
    assert log_config == {"Type": "json-file", "Config": {"max-file": "2", "max-size": "20m"}}
    assert rotated, "the engine's log never rotated: the flood did not reach it"
    assert 0 < engine_peak <= ENGINE_LOG_CAP, f"the engine kept {engine_peak} bytes of log"
    print(f"\n1 GB flood: {elapsed:.1f} s to the outcome; SPEED peak memory +{growth // 1024} KiB; "
          f"database {database} bytes; engine log peak {engine_peak} bytes; marker: "
          f"{marker.group(0).strip()}")


async def test_containers_lack_raw_sockets_and_other_capabilities_they_do_not_need(client, repo):
    """Attack: containers kept CAP_NET_RAW on the shared bridge (raw sockets: spoofing their
    neighbours). Asserts: the container's effective capabilities lack NET_RAW, MKNOD,
    AUDIT_WRITE and SETFCAP, and keep what ordinary programs use (CHOWN, SETUID, KILL)."""
    url, _ = repo("grep CapEff /proc/self/status\n")
    deployment_id = await start(client, url)
    assert (await wait_finished(client, deployment_id))["status"] == "Succeeded"
    effective = int(re.search(r"CapEff:\s*([0-9a-f]+)", await results_of(client, deployment_id))
                    .group(1), 16)
    bits = {"CHOWN": 0, "KILL": 5, "SETUID": 7, "NET_RAW": 13, "MKNOD": 27, "AUDIT_WRITE": 29,
            "SETFCAP": 31}
    held = {name for name, bit in bits.items() if effective & (1 << bit)}
    assert held == {"CHOWN", "KILL", "SETUID"}, held


async def test_deployments_cannot_reach_each_other(client, repo, docker_client):
    """Isolation (found by a hostile review): a fork's deployment shared the default bridge with
    containers holding secrets and could connect to any port they listen on. Asserts: a
    deployment cannot open a connection to another's web server, while that server answers its
    own container (it is up)."""
    from tests.conftest import instance_of, wait_for
    get = "printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {} 8000 | grep -q served"
    url, _ = repo("mkdir /www; echo served > /www/index.html; (httpd -f -p 8000 -h /www &)\n"
                  f"sleep 0.5; {get.format('127.0.0.1')} && echo up-inside\nsleep 600\n")
    server = await start(client, url)

    async def address():
        if "up-inside" not in await results_of(client, server):
            return None
        found = docker_client.api.containers(filters={"label": [
            f"speed.instance={instance_of(client)}", f"speed.deployment={server}"]})
        networks = docker_client.api.inspect_container(found[0]["Id"])["NetworkSettings"]["Networks"]
        return next(iter(networks.values()))["IPAddress"]

    target = await wait_for(address)
    url, _ = repo(f"{get.format(target)} && echo reached || echo unreached\n")
    prober = await start(client, url)
    assert (await wait_finished(client, prober))["status"] == "Succeeded"
    results = await results_of(client, prober)
    assert "\nunreached\n" in results and "\nreached\n" not in results
    await client.post(f"/cancel/{server}")
