"""Text from the server reaches an operator's terminal escaped: no clipboard writes, no forged
lines, no cursor moves. Pure functions first, then the real `speed` against a real SPEED."""
import asyncio
import json
import os
import re
import tty
import unicodedata

import pytest
from aiohttp import web

from bot.keys import store_key
from speedcli.safe import RESET, LogText, field, log
from storage import deployments as queries
from tests.conftest import results_of, wait_finished, wait_for
from tests.test_cli import NOWHERE, TIMEOUT, _pty_contents, base_url, running, speed, start

# The attack of the review: write the clipboard (OSC 52), go up a line, erase it, and draw a
# status of one's own there.
ATTACK = "\x1b]52;c;aGVsbG8=\x07\x1b[1A\x1b[2K\rstatus: Succeeded"
SHOWN = r"\x1b]52;c;aGVsbG8=\x07\x1b[1A\x1b[2K\rstatus: Succeeded"
BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
CONTROLS = [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) == "Cc"]
SGR = re.compile(r"\x1b\[[0-9;]*m")
RED = "\x1b[31mred\x1b[0m"


def raw_controls(text: str, kept: str = "") -> list[str]:
    """The control (Cc) and bidi characters in text, but those kept."""
    return [c for c in text if (c in CONTROLS or c in BIDI) and c not in kept]


def assert_safe_log(text: str) -> None:
    """Log text that can only break lines, tab, and (SGR) colour: nothing else reaches the
    terminal raw, a CR only ends a line."""
    assert raw_controls(SGR.sub("", text).replace("\r\n", "\n"), kept="\n\t") == [], repr(text)


# --- the pure functions ---------------------------------------------------------------------

@pytest.mark.parametrize("char", CONTROLS + list(BIDI), ids=lambda c: f"U+{ord(c):04X}")
def test_field_escapes_every_control_and_bidi_character(char):
    """Every Unicode Cc character and bidi control becomes a visible backslash escape."""
    shown = field(f"a{char}b")
    assert raw_controls(shown) == [] and shown.startswith("a\\") and shown.endswith("b")
    assert re.fullmatch(r"a\\(x[0-9a-f]{2}|u[0-9a-f]{4}|[nrt])b", shown), shown


def test_field_spells_escapes_readably_and_leaves_printable_text_alone():
    assert field(ATTACK) == SHOWN
    assert field("a\nb\tc\u009bd\u0085e\u202ef") == r"a\nb\tc\u009bd\u0085e\u202ef"
    for text in ("feature/ünïcödé-🚀", "Failed: exit code 3", "a\\nb", "日本語 テキスト"):
        assert field(text) == text


@pytest.mark.parametrize("terminal", [True, False])
def test_log_keeps_line_ends_and_tabs_and_colours_only_on_a_terminal(terminal):
    text = f"one\n\ttwo\r\n{RED} three\n"
    safe = log(text, terminal)
    if terminal:
        assert safe == text  # colours were reset by the text itself; none is left open
    else:
        assert safe == "one\n\ttwo\r\n\\x1b[31mred\\x1b[0m three\n"
    assert log("\x1b[1;32mbold green", True) == "\x1b[1;32mbold green" + RESET
    assert log("plain", True) == "plain"  # no colour let through: no reset either


@pytest.mark.parametrize("terminal", [True, False])
@pytest.mark.parametrize("sequence, shown", [
    (ATTACK, SHOWN),  # OSC 52 clipboard write, cursor up, erase line, carriage return
    ("\x1b]0;title\x1b\\", "\\x1b]0;title\\x1b\\"),  # OSC with ST: the window title
    ("\x1b[2J\x1b[H", r"\x1b[2J\x1b[H"),  # clear the screen, cursor home
    ("\x1b[6n", r"\x1b[6n"),  # a query the terminal answers on stdin
    ("\x1bP+q\x1b\\", "\\x1bP+q\\x1b\\"),  # DCS
    ("\x9b2J\x9d0;x\x07", r"\u009b2J\u009d0;x\x07"),  # the same through C1 controls
    ("ok\rFAIL\x08\x08\x08\x08", r"ok\rFAIL\x08\x08\x08\x08"),  # lone CR, backspaces
    ("\x07\x00\x0b\x0c\x7f", r"\x07\x00\x0b\x0c\x7f"),
    ("abc\u202edef\u2066x", r"abc\u202edef\u2066x"),  # bidi reordering
])
def test_log_escapes_every_other_sequence(sequence, shown, terminal):
    """Only SGR colours survive, and only on a terminal; any other escape sequence, a lone CR,
    BEL, backspace, C1 and bidi controls are shown, not obeyed."""
    safe = log(f"build step\n{sequence}\n", terminal)
    assert safe == f"build step\n{shown}\n"
    assert_safe_log(safe)


@pytest.mark.parametrize("terminal", [True, False])
def test_a_sequence_split_anywhere_between_pieces_is_judged_whole(terminal):
    """--follow gets the log in pieces: split at every point, the output is that of the whole
    text, so half a sequence in each piece neither gets through nor loses a colour or a CRLF."""
    text = f"start\x1b[31mred\x1b[0m {ATTACK}\r\nnext\x1b[1;33;44mx\x1b[0m\r\n\x9b2J"
    whole = log(text, terminal)
    for cut in range(len(text) + 1):
        logs = LogText(terminal)
        pieces = logs.feed(text[:cut]) + logs.feed(text[cut:]) + logs.flush() + logs.reset()
        assert pieces == whole, cut
        assert_safe_log(pieces)
    assert (RED in whole) is terminal


def test_a_sequence_cut_off_at_the_end_is_escaped():
    """What was held back for a next piece that never came is written, escaped."""
    for end in ("\x1b", "\x1b[", "\x1b[31", "\r"):
        logs = LogText(terminal=True)
        assert logs.feed("text" + end) == "text"
        assert logs.flush() == field(end)


# --- the real `speed` against a real SPEED ---------------------------------------------------

async def running_deployment(client, repo) -> int:
    """A deployment whose container runs until cancelled."""
    deployment_id = await start(client, repo("echo started\nsleep 600\n")[0])

    async def is_running():
        return (await (await client.get(f"/info/{deployment_id}")).json())["status"] == "Running"

    await wait_for(is_running)
    return deployment_id


def assert_one_real_status(out: str, status: str) -> None:
    """The output's only status line is the real one; no forged line, nothing raw."""
    assert raw_controls(out, kept="\n") == [], repr(out)
    lines = out.split("\n")
    assert [line.split() for line in lines if line.startswith("status")] == [["status:", status]]
    assert not any(line.lstrip().startswith("status: Succeeded") for line in lines)
    assert re.search(rf"^progress: +{re.escape(SHOWN)}$", out, re.M), out


async def test_info_and_cancel_escape_a_forged_progress_line(client, repo):
    """The review's attack: progress set through POST /update (no token needed by default) to
    an OSC 52 clipboard write and a cursor move that redraws the line as `status: Succeeded`.
    Asserts: `speed info` and `speed cancel` print it escaped on its own line, and the only
    status line is the real one."""
    deployment_id = await running_deployment(client, repo)
    update = {"id": deployment_id, "new_results": ATTACK}
    assert (await client.post("/update", json=update)).status == 200
    server = base_url(client)

    info = await speed(server, "info", str(deployment_id))
    assert info.code == 0, info.err
    assert_one_real_status(info.out, "Running")

    cancelled = await speed(server, "cancel", str(deployment_id))
    assert cancelled.code == 0, cancelled.err
    assert_one_real_status(cancelled.out, "Cancelled")


async def test_list_escapes_cells_of_a_row_stored_before_branches_were_checked(client):
    """A deployment stored before SPEED refused C1 controls in branch names (U+009B is a CSI)
    still lists as one escaped row: no extra line, no raw control character."""
    branch = "main\u009b2J\u0085\x1b]52;c;aGVsbG8=\x07\n9  Succeeded\u202e"
    planted = await client.app[store_key].change(queries.create, NOWHERE, branch)
    await wait_finished(client, planted.id)

    listed = await speed(base_url(client), "list")
    assert listed.code == 0, listed.err
    assert raw_controls(listed.out, kept="\n") == [], repr(listed.out)
    header, row = listed.out.rstrip("\n").split("\n")
    assert row.split()[:4] == [str(planted.id), "Failed", NOWHERE,
                               r"main\u009b2J\u0085\x1b]52;c;aGVsbG8=\x07\n9"]
    assert row.split()[4] == r"Succeeded\u202e"


async def test_error_messages_from_the_server_are_escaped(aiohttp_server):
    """A server (or a proxy in front of SPEED) whose error text or status line carries escape
    sequences: `speed` prints one escaped line on stderr."""

    async def hostile(request: web.Request) -> web.Response:
        return web.json_response({"error": ATTACK + "\nspeed: all good"}, status=404)

    app = web.Application()
    app.router.add_get("/info/{id}", hostile)
    server = base_url(await aiohttp_server(app))
    ran = await speed(server, "info", "1")
    assert (ran.code, ran.out) == (3, "")
    assert ran.err == f"speed: 404: {SHOWN}\\nspeed: all good\n"

    async def bad_status_line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(ATTACK.encode() + b" HTTP/1.1 200 OK\r\n\r\n")
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(bad_status_line, "127.0.0.1", 0)
    async with listener:
        port = listener.sockets[0].getsockname()[1]
        ran = await speed(f"http://127.0.0.1:{port}", "info", "1")
    assert (ran.code, ran.out) == (3, "")
    assert ran.err.startswith(f"speed: cannot reach SPEED at http://127.0.0.1:{port}: {SHOWN}")
    assert ran.err.count("\n") == 1 and raw_controls(ran.err, kept="\n") == [], repr(ran.err)


async def attacked_log(client) -> tuple[int, str]:
    """A finished deployment whose results carry the attack and a colour (added by an API
    call, as a container calls back); its id and its recorded results."""
    deployment_id = await start(client, NOWHERE)
    await wait_finished(client, deployment_id)
    text = f"{RED}\tdone\r\nok\rFAIL {ATTACK}\n"
    response = await client.post(f"/add_results/{deployment_id}", json={"results": text})
    assert response.status == 200
    recorded = await results_of(client, deployment_id)
    assert text in recorded
    return deployment_id, recorded


async def test_results_and_logs_escape_log_text_when_piped(client):
    """Piped (not a terminal): the log keeps its lines, tabs and CRLF; the OSC 52 write, the
    lone CR and even the colours are shown as escapes. `logs --follow` prints the same."""
    deployment_id, recorded = await attacked_log(client)
    server = base_url(client)
    expected = log(recorded, terminal=False)
    assert r"\x1b[31mred\x1b[0m" + f"\tdone\r\nok\\rFAIL {SHOWN}\n" in expected
    for args, code in ((["results"], 0), (["logs"], 0), (["logs", "--follow"], 1)):
        ran = await speed(server, *args, str(deployment_id))
        assert ran.code == code, ran.err  # 1: --follow exits with the outcome, Failed
        assert ran.out == expected, args
        assert "\x1b" not in ran.out and "\x07" not in ran.out
        assert_safe_log(ran.out)


async def on_a_terminal(server: str, *args: str, stderr_too: bool = False) -> tuple[int, str]:
    """`speed ARGS` with stdout (and stderr_too) on a pseudo-terminal: its exit code and what the
    terminal got."""
    master, terminal = os.openpty()
    tty.setraw(terminal)  # no \n -> \r\n translation: every \r seen is the client's
    try:
        contents = _pty_contents(master)
        stderr = terminal if stderr_too else asyncio.subprocess.PIPE
        async with running(server, *args, stdout=terminal, stderr=stderr) as process:
            os.close(terminal)
            await asyncio.wait_for(process.wait(), TIMEOUT)
        return process.returncode, (await asyncio.wait_for(contents, TIMEOUT)).decode()
    finally:
        os.close(master)


async def test_results_on_a_terminal_keep_colours_and_escape_the_rest(client):
    """On a terminal the colour reaches it (and is reset at the end); the OSC 52 write, the
    cursor moves and the lone CR do not."""
    deployment_id, recorded = await attacked_log(client)
    code, shown = await on_a_terminal(base_url(client), "results", str(deployment_id))
    assert code == 0
    assert shown == log(recorded, terminal=True)
    assert f"{RED}\tdone\r\nok\\rFAIL {SHOWN}\n" in shown
    assert_safe_log(shown)


def events_server(*logs: str) -> web.Application:
    """An event stream for deployment 7: Running, these log events, then the end, Succeeded."""
    events = [("status", {"status": "Running", "phases": {}}), *(("log", text) for text in logs),
              ("end", {"status": "Succeeded"})]

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for number, (kind, data) in enumerate(events):
            data = json.dumps(data)
            await response.write(f"id: {number}\nevent: {kind}\ndata: {data}\n\n".encode())
            await asyncio.sleep(0.05)  # each its own read on the client's side
        return response

    app = web.Application()
    app.router.add_get("/deployments/{id}/events", stream)
    return app


async def test_follow_judges_a_sequence_split_between_two_log_events_whole(aiohttp_server):
    """`speed logs --follow` on a terminal: the OSC 52 write cut after its ESC stays escaped,
    the colour cut inside `ESC[31m` is still a colour. Piped, both are escaped. (SPEED's own
    pieces end where its writes did; a proxy, or a build's output, may cut anywhere.)"""
    server = base_url(await aiohttp_server(events_server(
        "before\x1b", "]52;c;aGVsbG8=\x07after\n", "x\x1b[3", "1mred\x1b[0m\n")))
    code, shown = await on_a_terminal(server, "logs", "7", "--follow")
    assert code == 0
    assert shown == f"before\\x1b]52;c;aGVsbG8=\\x07after\nx{RED}\n"
    piped = await speed(server, "logs", "7", "--follow")
    assert piped.code == 0
    assert piped.out == "before\\x1b]52;c;aGVsbG8=\\x07after\nx\\x1b[31mred\\x1b[0m\n"


async def test_a_colour_the_log_leaves_on_is_reset_before_speeds_own_lines(aiohttp_server):
    """A log that turns on SGR 8 (concealed text) and never turns it off: on a terminal the
    phase line and the final line are drawn after a reset, so they stay visible (the log's
    colour then ends with its line)."""
    server = base_url(await aiohttp_server(events_server("\x1b[8mhidden\n", "still hidden\n")))
    code, shown = await on_a_terminal(server, "logs", "7", "--follow", stderr_too=True)
    assert code == 0
    concealed = shown.index("\x1b[8mhidden\n")
    assert shown.index(RESET, concealed) < shown.index("speed: deployment 7", concealed), shown
    assert shown.rstrip("\n").endswith("\rspeed: deployment 7 Succeeded"), repr(shown)
