"""kill -9 of SPEED at every step of a switch: after the restart exactly one release of the
environment is live and routed, the other stopped, and the deployment's outcome recorded."""
import datetime
import sqlite3
import uuid

import pytest
import requests
import yaml

from tests.process import speed_processes
from tests.test_services import APP_DOCKERFILE, SPEED_YML

pytestmark = pytest.mark.slow

# Healthy only once the test says so (/tmp/ready in the container): SPEED is killed meanwhile.
READY = ("#!/bin/sh\nif [ -f /tmp/ready ]; then printf 'Status: 200 OK\\r\\n\\r\\nok\\n'\n"
         "else printf 'Status: 503 Wait\\r\\n\\r\\nno\\n'; fi\n")


def files(version: str, health: str = "/healthz") -> dict:
    return {"Dockerfile": APP_DOCKERFILE, "www/index.html": f"{version}\n", "www/healthz": "ok\n",
            "www/cgi-bin/ready": READY,
            ".speed.yml": SPEED_YML.replace("/healthz", health) % 60}


def _rows(bot, query: str, *args) -> list[sqlite3.Row]:
    with sqlite3.connect(bot.db_path) as db:
        db.row_factory = sqlite3.Row
        return db.execute(query, args).fetchall()


def _write(bot, *statements: tuple) -> None:
    with sqlite3.connect(bot.db_path) as db:
        for statement in statements:
            db.execute(*statement)


def _served(caddy, host: str) -> tuple[int, str] | None:
    try:
        answer = requests.get(f"http://{caddy.listen}/", headers={"Host": host}, timeout=5)
        return answer.status_code, answer.text.strip()
    except requests.RequestException:
        return None


@pytest.mark.parametrize("step", ["starting", "healthy", "live", "draining", "live, limits lowered"])
def test_kill_9_at_every_step_of_a_switch_leaves_one_release_live(
        tmp_path, docker_client, base_image, caddy, git_server, step):
    """The database says where the switch was (a kill at the healthy and live steps is the
    database as the kill would leave it); the restart finishes it: the new release live and
    routed, the old one stopped, the deployment Succeeded. Also when the server's limits were
    lowered below the release's settings meanwhile (found by a hostile review: the live
    release was then followed as a job, and killed at the timeout)."""
    name = f"faults-{uuid.uuid4().hex[:8]}"
    url = git_server.url(name)
    with speed_processes(tmp_path, docker_client) as make:
        bot = make(proxy={"admin": caddy.admin, "listen": caddy.listen})
        git_server.commit(name, files("v1"))
        first = bot.start_deployment(url)
        assert bot.wait_finished(first, 90)["status"] == "Succeeded"
        git_server.commit(name, files("v2", health="/cgi-bin/ready"))
        second = bot.start_deployment(url)
        new = bot.wait_until(lambda: _rows(
            bot, "SELECT * FROM release WHERE deployment_id = ? AND container_id IS NOT NULL "
                 "AND upstream IS NOT NULL", second), 90)[0]
        bot.wait_output(second, "waiting for GET /cgi-bin/ready")
        bot.kill9()
        (environment,) = _rows(bot, "SELECT * FROM environment")
        host = f"{environment['address']}.localhost"
        assert _served(caddy, host) == (200, "v1")  # SPEED down: the live release serves on

        (old,) = _rows(bot, "SELECT * FROM release WHERE deployment_id = ?", first)
        now = datetime.datetime.utcnow().isoformat(sep=" ")
        if step != "starting":
            _write(bot, ("UPDATE release SET state = 'healthy' WHERE id = ?", (new["id"],)))
        if step.startswith("live") or step == "draining":  # go_live's transaction, committed
            _write(bot, ("UPDATE release SET state = 'live', live_since = ? WHERE id = ?",
                         (now, new["id"])),
                   ("UPDATE release SET state = 'draining', drain_until = ? WHERE id = ?",
                    (now, old["id"])),
                   ("UPDATE environment SET live = ? WHERE id = ?", (new["id"], environment["id"])))
        if step == "draining":  # and the deployment's outcome, recorded
            _write(bot, ("UPDATE deployment SET status = 'Succeeded', finished_at = ?, "
                         "reason = 'live' WHERE id = ?", (now, second)))
        docker_client.containers.get(new["container_id"]).exec_run("touch /tmp/ready")
        if step == "live, limits lowered":  # under the release's health deadline (60 s)
            config = yaml.safe_load(bot.config_path.read_text())
            config["runner"]["timeout"] = bot.timeout = 40
            bot.config_path.write_text(yaml.safe_dump(config))

        bot.start()
        assert bot.wait_finished(second, 90)["status"] == "Succeeded", bot.results(second)
        bot.wait_until(lambda: _served(caddy, host) == (200, "v2"), 30)
        bot.wait_until(lambda: _rows(bot, "SELECT state FROM release WHERE id = ?",
                                     old["id"])[0]["state"] == "retired", 30)
        live = _rows(bot, "SELECT id FROM release WHERE state = 'live'")
        assert [r["id"] for r in live] == [new["id"]]
        assert _rows(bot, "SELECT live FROM environment")[0]["live"] == new["id"]
        running = docker_client.containers.list(filters={"label": f"speed.instance={bot.instance}"})
        assert [c.id for c in running] == [new["container_id"]]
