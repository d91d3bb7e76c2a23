"""Issue 11's load: three replicas on one PostgreSQL database, 200 pushes delivered to random
replicas, and the replica sending GitHub's outbox killed midway. Each deployment's container runs
once; every state reaches GitHub once, in order (queued, running, success)."""
import asyncio
import random
import subprocess
import uuid

import aiohttp
import pytest
from cryptography.fernet import Fernet

from tests.conftest import DOCKERFILE, TEST_INSTANCES, free_port
from tests.fake_github import FakeGitHub
from tests.process import SpeedProcess
from tests.webhooks import delivery_headers, encode, push_payload

pytestmark = pytest.mark.slow

DEPLOYMENTS = 200
# A killed replica is found dead at once on its own machine, whatever the lease; a short one
# would only make the leadership of the outbox flap while two cores are this busy.
LEASE = 10
SECRET = "load-webhook-secret"
TOKEN = "ghp_" + "l" * 36
PUBLIC_URL = "http://speed.example"  # one address for the cluster: every replica's target_url


def start_replicas(tmp_path, postgres_url: str, github_url: str, git_url: str) -> list[SpeedProcess]:
    key = Fernet.generate_key().decode()
    started = []
    for n in range(3):
        folder = tmp_path / f"replica-{n}"
        folder.mkdir()
        port = free_port()
        replica = SpeedProcess(folder, port, free_port(), lease=LEASE,
                               workdir=str(tmp_path / "work"), sections={
            "server": {"host": "127.0.0.1", "port": port, "public_url": PUBLIC_URL},
            "database": {"url": postgres_url}, "secrets": {"key": key},
            "github": {"webhook_secret": SECRET, "token": TOKEN, "api_url": github_url,
                       "web_url": git_url, "report_retry_for": 120},
            "repos": [{"match": "load/*", "branches": ["*"]}]})
        replica.start()
        TEST_INSTANCES.add(replica.instance)
        started.append(replica)
    return started


def branches(git_server, full_name: str, sha: str, count: int) -> list[str]:
    """count branches of the repository at one commit, made in one git call."""
    names = [f"load-{n:03d}" for n in range(count)]
    subprocess.run(["git", "--git-dir", str(git_server.root / f"{full_name}.git"), "update-ref",
                    "--stdin"], input="".join(f"create refs/heads/{name} {sha}\n" for name in names),
                   text=True, check=True)
    return names


async def deliver_all(replicas: list[SpeedProcess], full_name: str, url: str, sha: str,
                      names: list[str]) -> list[int]:
    """Each branch's push to a random replica, twenty at a time; the deployments' ids."""
    gate = asyncio.Semaphore(20)

    async def push(session: aiohttp.ClientSession, branch: str) -> int:
        body = encode(push_payload(full_name, url, ref=f"refs/heads/{branch}", after=sha))
        async with gate, session.post(f"{random.choice(replicas).base_url}/webhook", data=body,
                                      headers=delivery_headers("push", body, SECRET)) as answer:
            assert answer.status == 202, await answer.text()
            return (await answer.json())["id"]

    async with aiohttp.ClientSession() as session:
        return list(await asyncio.gather(*(push(session, name) for name in names)))


async def until(check, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await asyncio.to_thread(check):
        assert loop.time() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.2)


async def test_three_replicas_run_each_push_once_and_report_each_state_once_in_order(
        tmp_path, postgres_url, git_server, base_image):
    full_name = f"load/app-{uuid.uuid4().hex[:6]}"
    sha = git_server.commit(full_name, {"Dockerfile": DOCKERFILE, "run.sh": "echo deployed\n"})
    names = branches(git_server, full_name, sha, DEPLOYMENTS - 1) + ["main"]
    async with FakeGitHub(token=TOKEN) as fake:
        replicas = await asyncio.to_thread(start_replicas, tmp_path, postgres_url, fake.url,
                                           git_server.base_url)
        try:
            sql = replicas[-1].sql
            first, rest = names[:DEPLOYMENTS // 3], names[DEPLOYMENTS // 3:]
            ids = await deliver_all(replicas, full_name, git_server.url(full_name), sha, first)
            # The oldest replica sends the outbox: kill it while states are on their way.
            await until(lambda: fake.statuses_for(full_name, sha), 60, "a first status")
            replicas[0].kill9()
            alive = replicas[1:]
            ids += await deliver_all(alive, full_name, git_server.url(full_name), sha, rest)
            assert len(set(ids)) == DEPLOYMENTS

            await until(lambda: sql("SELECT count(*) FROM deployment WHERE status IN "
                                    "('Pending', 'Running')") == [(0,)], 600, "every deployment")
            await until(lambda: sql("SELECT count(*) FROM report WHERE state IN "
                                    "('waiting', 'sending')") == [(0,)], 120, "every report")
            outcomes = dict(sql("SELECT status, count(*) FROM deployment GROUP BY status"))
            assert outcomes == {"Succeeded": DEPLOYMENTS}, sql(
                "SELECT id, status, reason, attempts FROM deployment WHERE status <> 'Succeeded'")
            for deployment_id in ids:  # its container ran once, whoever claimed or adopted it
                text = "".join(t for (t,) in sql("SELECT text FROM result WHERE deployment_id = %s "
                                                 "ORDER BY id", (deployment_id,)))
                assert text.count("[speed] starting the container") == 1, text
                assert text.count("deployed\n") == 1, text

            by_deployment: dict[str, list[tuple[str, str]]] = {}
            for status in fake.statuses_for(full_name, sha):  # in the order GitHub got them
                by_deployment.setdefault(status["target_url"], []).append(
                    (status["state"], status["description"].split(" after ")[0]))
            assert len(by_deployment) == DEPLOYMENTS
            assert {tuple(states) for states in by_deployment.values()} == {
                (("pending", "Queued"), ("pending", "Running"), ("success", "Succeeded"))}
        finally:
            for replica in replicas:
                await asyncio.to_thread(replica.stop)
