"""The keys secrets are encrypted with: made once, checked at start-up, rotated while SPEED runs."""
import multiprocessing
import os
import pathlib
import sqlite3
import subprocess
import sys

import pytest
import yaml
from cryptography.fernet import Fernet

from storage.keyring import KeyFileKeyring, KeyringError, read_key_file
from storage.models import Deployment
from storage.status import Status
from storage.store import Store
from tests.conftest import results_of, wait_finished
from tests.process import ROOT, speed_processes
from tests.test_secrets import VALUE, app_repository, put, start

SECRET_DOCKERFILE = ("FROM speed-test-base:latest\n"
                     "CMD [\"sh\", \"-c\", \"echo length=${#DEPLOY_KEY}\"]\n")


def speed_main(config: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
    """`python main.py --config CONFIG ARGS` as the README has it, to its end."""
    return subprocess.run([sys.executable, "main.py", "--config", str(config), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def stored_ciphertexts(db_path: pathlib.Path) -> dict[str, str]:
    """Every secret's ciphertext, read from the database file."""
    with sqlite3.connect(db_path) as db:
        return dict(db.execute("SELECT name, value FROM secret"))


def _start_keyrings(paths: list[str], barrier, results) -> None:
    """One of many processes: per path, wait for the others, then start a keyring on it."""
    for path in paths:
        barrier.wait()
        try:
            keyring = KeyFileKeyring(pathlib.Path(path))
            keyring.check([])  # what start-up does on a new database
            results.put((path, keyring.encrypt(path), None))
        except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
            results.put((path, None, f"{type(e).__name__}: {e}"))


def test_key_files_made_by_many_processes_at_once_hold_one_key_all_use(tmp_path):
    """Issue 11: 8 processes start a keyring on the same missing key file at the same moment,
    40 times over. Each time every process encrypts under the one key the file holds (none
    fails with "no key" for having read the file before its key was written); the file is
    private and no temporary file is left beside it."""
    processes, rounds = 8, 40
    paths = [str(tmp_path / str(n) / "secrets.key") for n in range(rounds)]
    context = multiprocessing.get_context("spawn")  # no fork of pytest's threads
    barrier, results = context.Barrier(processes, timeout=60), context.Queue()
    workers = [context.Process(target=_start_keyrings, args=(paths, barrier, results))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    ciphertexts: dict[str, list[str]] = {path: [] for path in paths}
    errors = []
    for _ in range(processes * rounds):
        path, ciphertext, error = results.get(timeout=120)
        ciphertexts[path].append(ciphertext)
        errors += [error] if error else []
    for worker in workers:
        worker.join(timeout=30)
    assert (errors, [worker.exitcode for worker in workers]) == ([], [0] * processes)
    for path in paths:
        keys = read_key_file(pathlib.Path(path))
        assert len(keys) == 1, path
        assert [Fernet(keys[0]).decrypt(c.encode()).decode() for c in ciphertexts[path]] == \
            [path] * processes
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
        assert os.listdir(os.path.dirname(path)) == ["secrets.key"]


@pytest.mark.usefixtures("app_invariants")
async def test_the_key_file_is_made_once_and_private(make_client, tmp_path):
    """The embedded default needs no set-up: the first start makes secrets.key beside the
    database, readable by its owner only; a second start reuses it."""
    await make_client("keyed")
    key_file = tmp_path / "keyed" / "secrets.key"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    key = key_file.read_text()
    await make_client("keyed")
    assert key_file.read_text() == key


@pytest.mark.slow
def test_a_lost_or_wrong_key_file_stops_speed_at_start_up(tmp_path, docker_client):
    """Issue 12: with a secret stored, SPEED (a real process, started as the README says) whose
    secrets.key was deleted exits 2 with one line saying to restore it, and makes no new key
    file; one whose key file holds another key exits 2 saying no key decrypts the secrets; with
    the file restored it starts. A database without secrets still gets a new key file."""
    with speed_processes(tmp_path, docker_client) as make:
        bot = make()
        assert bot.call("PUT", "/secrets/DEPLOY_KEY", {
            "value": VALUE, "repositories": ["github.com/acme/app"]})[0] == 201
        bot.stop()
        key_file = tmp_path / "secrets.key"
        key = key_file.read_text()
        key_file.unlink()
        lost = speed_main(bot.config_path)
        assert (lost.returncode, lost.stderr.splitlines()[-1]) == (2, (
            f"speed: configuration error: secrets.key: {key_file} is missing, yet the database "
            "holds secrets encrypted under it; restore it from the database's backup"))
        assert "Traceback" not in lost.stderr and "listening on" not in lost.stderr
        assert not key_file.exists()
        key_file.write_text(Fernet.generate_key().decode() + "\n")
        wrong = speed_main(bot.config_path)
        assert (wrong.returncode, wrong.stderr.splitlines()[-1]) == (2, (
            "speed: configuration error: secrets.key: no key decrypts any secret in the "
            "database; configure the key they were encrypted under (from a backup)"))
        key_file.write_text(key)
        bot.start()
        assert bot.call("DELETE", "/secrets/DEPLOY_KEY")[0] == 200
        bot.stop()
        key_file.unlink()  # nothing is stored now: nothing is lost with it
        bot.start()
        assert len(read_key_file(key_file)) == 1 and read_key_file(key_file) != [key.strip()]


@pytest.mark.slow
def test_rotation_while_speed_runs_takes_effect_in_it_at_once(
        tmp_path, docker_client, base_image, git_server):
    """Issue 5: `rotate-secrets --new-key` while SPEED runs. Afterwards the running SPEED still
    deploys with the secret, a secret it is then given is encrypted under the new first key
    (the new key alone decrypts it), and once the old key is removed from the file it deploys
    with both secrets as before, as does a new start."""
    with speed_processes(tmp_path, docker_client) as make:
        bot = make()
        url, pattern = app_repository(git_server, {
            "Dockerfile": "FROM speed-test-base:latest\nCMD [\"sh\", \"-c\", "
                          "\"echo length=${#DEPLOY_KEY}/${#LATER_KEY}\"]\n",
            ".speed.yml": "secrets: [DEPLOY_KEY, LATER_KEY]\n"})
        scope = {"repositories": [pattern]}
        assert bot.call("PUT", "/secrets/DEPLOY_KEY", {"value": VALUE, **scope})[0] == 201
        assert bot.call("PUT", "/secrets/LATER_KEY", {"value": "first-" + VALUE, **scope})[0] == 201
        key_file = tmp_path / "secrets.key"
        old_key = key_file.read_text().strip()
        rotated = speed_main(bot.config_path, "rotate-secrets", "--new-key")
        assert rotated.returncode == 0, rotated.stderr
        assert rotated.stdout.startswith("re-encrypted 2 secret values under the first key;")
        new_key, kept = read_key_file(key_file)
        assert kept == old_key != new_key

        def deploys() -> None:
            deployment_id = bot.start_deployment(url)
            info = bot.wait_finished(deployment_id, timeout=90)
            assert info["status"] == "Succeeded", info["reason"]
            assert f"length={len(VALUE)}/{len('later-' + VALUE)}" in bot.results(deployment_id)

        assert bot.call("PUT", "/secrets/LATER_KEY", {"value": "later-" + VALUE, **scope})[0] == 200
        later = stored_ciphertexts(bot.db_path)["LATER_KEY"]
        assert Fernet(new_key).decrypt(later.encode()).decode() == "later-" + VALUE
        deploys()
        key_file.write_text(new_key + "\n")  # the old key goes, as the tool said it may
        deploys()
        bot.stop()
        bot.start()
        deploys()


@pytest.mark.usefixtures("app_invariants")
async def test_rotation_re_encrypts_under_a_new_key_and_the_old_one_may_go(
        make_client, git_server, base_image, tmp_path):
    """Rotation: with a secret stored, `main.py rotate-secrets --new-key` puts a new key first
    and re-encrypts; with the old key then removed from the key file, a new SPEED on the same
    database still gives the deployment its secret. With only the old key, which no secret is
    encrypted under any more, SPEED refuses to start."""
    first = await make_client("rotated", runner__allowed_urls=["http://127.0.0.1:*"])
    url, pattern = app_repository(git_server, {
        "Dockerfile": SECRET_DOCKERFILE, ".speed.yml": "secrets: [DEPLOY_KEY]\n"})
    assert (await put(first, "DEPLOY_KEY", VALUE, [pattern])).status == 201
    await first.close()
    directory = tmp_path / "rotated"
    key_file = directory / "secrets.key"
    old_key = key_file.read_text().strip()
    config = directory / "app.yaml"
    config.write_text(f"database:\n  url: sqlite:///{directory / 'speed.db'}\n")
    done = speed_main(config, "rotate-secrets", "--new-key")
    assert done.returncode == 0, done.stderr
    assert "re-encrypted 1 secret value under the first key" in done.stdout
    new_key, kept = key_file.read_text().split()
    assert kept == old_key != new_key
    key_file.write_text(new_key + "\n")
    second = await make_client("rotated", runner__allowed_urls=["http://127.0.0.1:*"])
    deployment_id = await start(second, url)
    info = await wait_finished(second, deployment_id)
    assert info["status"] == "Succeeded"
    assert f"length={len(VALUE)}" in await results_of(second, deployment_id)
    await second.close()
    key_file.write_text(old_key + "\n")  # the key the secret is no longer encrypted under
    with pytest.raises(KeyringError, match="no key decrypts any secret in the database"):
        await make_client("rotated", runner__allowed_urls=["http://127.0.0.1:*"])


@pytest.mark.usefixtures("app_invariants")
async def test_rotate_secrets_names_what_the_first_key_does_not_decrypt(make_client, tmp_path):
    """Issue 5: rotate-secrets says the old keys may go only once every ciphertext, read back,
    decrypts with the first key alone. With secrets.key in app.yaml dropping a key too early
    (one secret is encrypted under it, another is readable), it re-encrypts what it can, names
    the other and exits 1; with the key put back, it re-encrypts both and exits 0."""
    k1, k2, k3 = (Fernet.generate_key().decode() for _ in range(3))
    for keys, name in (([k3], "EARLY_KEY"), ([k1, k3], "LATER_KEY")):
        client = await make_client("static", secrets__key=keys)
        assert (await client.put(f"/secrets/{name}", json={
            "value": VALUE, "repositories": ["github.com/acme/app"]})).status == 201
        await client.close()
    directory = tmp_path / "static"
    config = directory / "app.yaml"

    def rotate(*keys: str) -> subprocess.CompletedProcess:
        config.write_text(yaml.safe_dump({"database": {"url": f"sqlite:///{directory}/speed.db"},
                                          "secrets": {"key": list(keys)}}))
        return speed_main(config, "rotate-secrets")

    early = rotate(k2, k1)
    assert (early.returncode, early.stdout, early.stderr.splitlines()[-1]) == (1, "", (
        "re-encrypted 1 secret value under the first key; keep the keys after it, as these do not "
        "decrypt with it: secret EARLY_KEY (no key decrypts it: lost unless the key it was "
        "encrypted under is put back)"))
    stored = stored_ciphertexts(directory / "speed.db")
    assert Fernet(k2).decrypt(stored["LATER_KEY"].encode()).decode() == VALUE
    assert Fernet(k3).decrypt(stored["EARLY_KEY"].encode()).decode() == VALUE  # left as it was
    again = rotate(k2, k1, k3)
    assert (again.returncode, again.stdout) == (0, (
        "re-encrypted 2 secret values under the first key; every secret decrypts with it alone: "
        "keys after it are no longer needed\n")), again.stderr
    assert [Fernet(k2).decrypt(c.encode()).decode()
            for c in stored_ciphertexts(directory / "speed.db").values()] == [VALUE, VALUE]


async def test_rotate_secrets_re_encrypts_running_deployments_sealed_secrets(tmp_path):
    """A running deployment's sealed secret values (deployment.secrets_sealed) are re-encrypted
    with the secrets, so that the old key may go while it runs; a finished one's stay NULL."""
    k1, k2 = (Fernet.generate_key().decode() for _ in range(2))
    url = f"sqlite:///{tmp_path / 'speed.db'}"
    sealed = Fernet(k1).encrypt(b'{"DEPLOY_KEY": "s3cr3t-value"}').decode()

    def deployments() -> None:
        Deployment.create(url="https://github.com/acme/app", branch="main",
                          status=Status.RUNNING.value, secrets_sealed=sealed)
        Deployment.create(url="https://github.com/acme/app", branch="main",
                          status=Status.SUCCEEDED.value)

    store = Store(url)
    try:
        await store.run(deployments)
    finally:
        store.close()
    config = tmp_path / "app.yaml"
    config.write_text(yaml.safe_dump({"database": {"url": url}, "secrets": {"key": [k2, k1]}}))
    done = speed_main(config, "rotate-secrets")
    assert (done.returncode, done.stdout) == (0, (
        "re-encrypted 1 secret value under the first key; every secret decrypts with it alone: "
        "keys after it are no longer needed\n")), done.stderr
    with sqlite3.connect(tmp_path / "speed.db") as db:
        running, finished = [value for value, in db.execute(
            "SELECT secrets_sealed FROM deployment ORDER BY id")]
    assert (Fernet(k2).decrypt(running.encode()), finished) == (
        b'{"DEPLOY_KEY": "s3cr3t-value"}', None)
