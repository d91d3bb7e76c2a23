"""Secrets are redacted from stored output however the output is cut into writes or frames."""
import secrets

from runner.output import REDACTED, OutputRecorder
from tests.conftest import instance_of, results_of, wait_finished, wait_for

TOKEN = secrets.token_urlsafe(32)  # shaped like a deployment token: 43 URL-safe characters
CLONE_TOKEN = "ghs_" + secrets.token_hex(18)  # shaped like a GitHub installation token
DOCKER_FRAME = 16 * 1024  # Docker splits a longer line into frames of this size


class Store:
    """The recorder's writer: keeps each stored batch with its byte total and cursor, and cuts
    at the limit as storage.deployments.append_output does."""

    def __init__(self):
        self.batches: list[tuple[str, int, int | None]] = []

    async def __call__(self, deployment_id: int, text: str, cursor: int | None,
                       limit: int | None) -> tuple[int, int]:
        stored = self.batches[-1][1] if self.batches else 0
        data = text.encode()
        kept = data if limit is None else data[:max(limit - stored, 0)]
        self.batches.append((kept.decode("utf-8", "ignore"), stored + len(kept), cursor))
        return stored + len(kept), len(data) - len(kept)

    @property
    def text(self) -> str:
        return "".join(text for text, _, _ in self.batches)

    @property
    def cursor(self) -> int | None:
        """The cursor a reattach would resume after: the last one stored."""
        return next((c for _, _, c in reversed(self.batches) if c is not None), None)


def recorder(store: Store, limit: int = 10_000_000, stored: int = 0) -> OutputRecorder:
    output = OutputRecorder(1, store, limit, stored)
    output.redact(TOKEN)
    output.redact(CLONE_TOKEN)
    return output


async def record(pieces: list[str], limit: int = 10_000_000) -> str:
    """Everything stored after writing pieces in turn and closing."""
    store = Store()
    output = recorder(store, limit)
    for piece in pieces:
        await output.write(piece)
    await output.close()
    return store.text


async def test_secret_cut_at_every_position_across_two_writes():
    """Leak: a token split over two writes matched neither; asserts every cut stores [redacted]."""
    text = f"token={TOKEN}\n"
    for cut in range(len(text) + 1):
        assert await record([text[:cut], text[cut:]]) == f"token={REDACTED}\n", cut


async def test_secret_cut_at_every_pair_of_positions_across_three_writes():
    """Leak: a token in three writes; asserts every pair of cuts stores [redacted]."""
    text = f"a{CLONE_TOKEN}b"
    for first in range(len(text) + 1):
        for second in range(first, len(text) + 1):
            pieces = [text[:first], text[first:second], text[second:]]
            assert await record(pieces) == f"a{REDACTED}b", (first, second)


async def test_secret_in_a_line_longer_than_docker_frames():
    """Leak: Docker cuts a 40 KB line of tokens into 16 KB frames; asserts each is [redacted]."""
    copies = 40 * 1024 // (len(TOKEN) + 1)
    line = f"{TOKEN}," * copies + "\n"
    frames = [line[at:at + DOCKER_FRAME] for at in range(0, len(line), DOCKER_FRAME)]
    assert any(not frame.endswith(",") for frame in frames[:-1]), "a frame boundary cuts a token"
    store = Store()
    output = recorder(store)
    for n, frame in enumerate(frames, 1):
        await output.write(frame, cursor=n)
    await output.close()
    assert store.text == f"{REDACTED}," * copies + "\n"
    assert store.cursor == len(frames)


async def test_repeated_and_adjacent_secrets_cut_at_every_position():
    """Leak: secrets back to back, cut anywhere; asserts each one is [redacted]."""
    text = f"{TOKEN}{TOKEN} {TOKEN}{CLONE_TOKEN}{TOKEN}\n"
    expected = f"{REDACTED}{REDACTED} {REDACTED}{REDACTED}{REDACTED}\n"
    for cut in range(len(text) + 1):
        assert await record([text[:cut], text[cut:]]) == expected, cut


async def test_secret_across_the_byte_cap_cut_at_every_position():
    """Leak: a token's head fit under the cap; asserts the capped text is redacted, marker exact."""
    text = "x" * 100 + TOKEN + "y" * 50
    redacted = "x" * 100 + REDACTED + "y" * 50
    limit = 105  # the cap falls inside the token, and inside its replacement
    marker = (f"\n[output truncated: at least {len(redacted) - limit} bytes over the {limit}-byte limit "
              f"were not stored]\n")
    for cut in range(len(text) + 1):
        assert await record([text[:cut], text[cut:]], limit) == redacted[:limit] + marker, cut


async def test_held_writes_are_neither_lost_nor_duplicated_on_reattach():
    """Loss/duplication: SPEED dies while a write is held; asserts a reattach stores it once."""
    frames = ["first line\n", f"token={TOKEN[:20]}", f"{TOKEN[20:]} done\n", "last line\n"]
    expected = f"first line\ntoken={REDACTED} done\nlast line\n"
    for crash_after in range(1, len(frames) + 1):
        store = Store()
        before = recorder(store)
        for n, frame in enumerate(frames[:crash_after], 1):
            await before.write(frame, cursor=n)
        await before.flush()  # the timer's flush; then the process dies without close
        resumed_after = store.cursor or 0
        after = recorder(store, stored=len(store.text.encode()))
        for n, frame in enumerate(frames, 1):
            if n > resumed_after:  # what the Docker backend replays after the cursor
                await after.write(frame, cursor=n)
        await after.close()
        assert store.text == expected, crash_after
        assert TOKEN[:20] not in store.text


async def test_output_not_beginning_a_secret_is_stored_without_waiting():
    """Delay: asserts only a write ending in a secret's beginning waits past the flush."""
    store = Store()
    output = recorder(store)
    await output.write("progress 50%", cursor=7)
    await output.flush()
    assert store.batches == [("progress 50%", len("progress 50%"), 7)]
    await output.write(f"token {TOKEN[:5]}", cursor=8)
    await output.flush()
    assert store.text == "progress 50%", "a write ending in a token's beginning waits"
    await output.close()
    assert store.text == f"progress 50%token {TOKEN[:5]}" and store.cursor == 8


async def test_container_printing_its_token_in_a_40_kb_line_never_stores_it(
        make_client, repo, docker_client):
    """Leak: a container prints $SPEED_TOKEN across Docker's 16 KB frames; asserts [redacted]."""
    copies = 40 * 1024 // 44  # the token is 43 characters, then a comma
    url, _ = repo(f'i=0; while [ $i -lt {copies} ]; do printf "%s," "$SPEED_TOKEN"; '
                  'i=$((i+1)); done; echo; echo printed; sleep 60\n')
    client = await make_client()
    response = await client.post("/start", json={"url": url, "branch": "main"})
    deployment_id = (await response.json())["id"]

    async def printed():
        return "printed\n" in await results_of(client, deployment_id)

    await wait_for(printed)
    # The container is still running: read its token from the engine, then stop it.
    container, = docker_client.api.containers(filters={"label": [
        f"speed.instance={instance_of(client)}", f"speed.deployment={deployment_id}"]})
    env = docker_client.api.inspect_container(container["Id"])["Config"]["Env"]
    token = next(e.split("=", 1)[1] for e in env if e.startswith("SPEED_TOKEN="))
    await client.post(f"/cancel/{deployment_id}")
    await wait_finished(client, deployment_id)
    results = await results_of(client, deployment_id)
    assert token not in results
    assert token[:8] not in results and token[-8:] not in results
    assert f"\n{f'{REDACTED},' * copies}\nprinted\n" in results


def test_the_open_end_of_output_is_found_as_a_plain_search_would():
    """Unit: what is held back (the longest end of the output that begins a secret, found with
    str.find instead of a loop over every position — that cost a 64 KiB secret quadratic time)
    equals a plain search's answer, for secrets shorter and longer than the search window."""
    import random

    from runner.output import _open_prefix
    chooser = random.Random(7)
    for _ in range(3000):
        secret = "".join(chooser.choice("ab") for _ in range(chooser.randint(1, 150)))
        text = "".join(chooser.choice("ab") for _ in range(chooser.randint(0, 80)))
        text += secret[:chooser.randint(0, len(secret))]
        plain = next((k for k in range(min(len(text), len(secret) - 1), 0, -1)
                      if text.endswith(secret[:k])), 0)
        assert _open_prefix(secret, text) == plain, (secret, text)


def test_the_secrets_pattern_matches_as_the_list_of_alternatives_longest_first():
    """Unit: the pattern is a trie (a hostile review found a megabyte of callback text against
    20 keys' thousands of forms took 11 s on the event loop as a list of alternatives; 0.4 s
    now): it replaces exactly what that list, longest first, replaced — forms sharing
    beginnings, one inside another, regex metacharacters."""
    import random
    import re

    from runner.output import pattern_of
    chooser = random.Random(11)
    for _ in range(3000):
        forms = list({"".join(chooser.choice("ab(.*\\") for _ in range(chooser.randint(1, 7)))
                      for _ in range(chooser.randint(1, 8))})
        text = "".join(chooser.choice("ab(.*\\c") for _ in range(50))
        listed = re.compile("|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True)))
        assert pattern_of(forms).sub("#", text) == listed.sub("#", text), (forms, text)
    assert pattern_of([]) is None
    nested = ["x" * length for length in range(6, 526)]  # too deep a trie for Python's re
    assert pattern_of(nested).sub("#", "x" * 600 + "y") == "##y"  # 525, then 75
