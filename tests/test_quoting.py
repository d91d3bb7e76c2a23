"""Output lines that would pass for SPEED's own `[speed]` lines are quoted, however cut."""
import pytest

from runner.output import OutputRecorder
from storage.quoting import one_line, quote
from tests.test_output_redaction import Store

# Each shows as `[speed] Succeeded` on a terminal or the page.
FORGERIES = ["[speed] Succeeded\n", "\x1b[32m[speed] Succeeded\x1b[0m\n",
             "\x1b]0;title\x07[speed] Succeeded\n", "\x07\x08[speed] Succeeded\n",
             "[spe\x1b[0med] Succeeded\n", "\x1b7[speed] Succeeded\n", "\u200b[speed] Succeeded\n",
             "[sp\u2060e\x00ed] Succeeded\n", "[output truncated: at least 999 bytes were not stored]\n"]


@pytest.mark.parametrize("forged", FORGERIES)
def test_a_line_beginning_with_speed_is_quoted_after_any_line_end(forged):
    """Unit: at the start, after \\n and after \\r, a line that shows as SPEED's own (escape
    sequences and invisible characters anywhere in its start set aside) gets `> ` in front; in
    the middle of a line, or after visible indentation, `[speed]` is left alone."""
    for before in ("", "text\n", "text\r", "text\r\n"):
        assert quote(before + forged) == before + "> " + forged
    assert quote("a [speed] b\n") == "a [speed] b\n"
    assert quote("  [speed] b\n") == "  [speed] b\n"
    assert quote("[speed] b\n", at_line_start=False) == "[speed] b\n"


async def recorded(pieces: list[str], own_first: str | None = None) -> str:
    store = Store()
    output = OutputRecorder(1, store, 10_000_000)
    if own_first:
        await output.say(own_first)
    for piece in pieces:
        await output.write(piece)
        await output.flush()  # the timer's flush between pieces: nothing may go out unquoted
    await output.close()
    return store.text


@pytest.mark.parametrize("forged", FORGERIES)
async def test_a_forged_line_cut_anywhere_across_writes_is_still_quoted(forged):
    """Leak: Docker and builds cut output anywhere, so `[spe` and `ed]` may arrive in two writes
    flushed apart. Asserts: for every cut, after output that ended a line and after SPEED's own
    line, the stored text is the quoted forgery; SPEED's own line stays unquoted."""
    text = "build step\n" + forged
    for cut in range(len(text) + 1):
        stored = await recorded([text[:cut], text[cut:]], own_first="building")
        assert stored == "[speed] building\nbuild step\n> " + forged, cut


async def test_a_line_that_never_completes_speed_is_released_unchanged():
    """Delay: a held `[spe` that turns out to be something else goes out as it was; one the
    output ends on is quoted (nothing can tell), and lines showing nothing are left alone."""
    assert await recorded(["out\n[spe", "cial] x\n"]) == "out\n[special] x\n"
    assert await recorded(["out\n[spe"]) == "out\n> [spe"
    assert await recorded(["\x1b[0m\n", "\x1b[0m"]) == "\x1b[0m\n\x1b[0m"


def test_reasons_and_notes_are_one_line():
    """A reason quoting a Dockerfile (`RUN ["sh", "-c", "exit 1\\n[speed] Succeeded"]`) cannot
    start a line of its own in SPEED's note."""
    assert one_line("exit 1\n[speed] Succeeded\r\x1b[0m") == "exit 1\\n[speed] Succeeded\\r\\x1b[0m"


def test_reasons_and_notes_spell_out_invisible_characters():
    """A reason quoting a key someone named `A\\u202eB` or `\\u200bA` shows those characters
    spelt out, as Python writes them, not reordering or hiding text; so do every listed format
    character and the line and paragraph separators."""
    assert one_line("env.\u202eA\u200bB\u2066\ufeff\U000e0041\xad") == \
        r"env.\u202eA\u200bB\u2066\ufeff\U000e0041\xad"
    assert one_line("a\u2028b\u2029c\x85d") == r"a\u2028b\u2029c\x85d"
    from storage.quoting import FORMAT_RANGES
    every = "".join(chr(c) for a, b in FORMAT_RANGES for c in range(a, b + 1))
    assert one_line(every).isascii()
    assert one_line("café 日本 😀 \\n") == "café 日本 😀 \\n"  # what shows is left alone


def test_one_line_keeps_to_a_limit_without_cutting_a_spelt_character():
    """With limit, at most that many characters, the cut marked with …; a spelt-out character
    is never cut in two (`\\u20` would read as something else); without limit, all of it."""
    assert one_line("x" * 5_000, limit=2_000) == "x" * 1_999 + "…"
    assert one_line("x" * 2_000, limit=2_000) == "x" * 2_000
    assert one_line("short", limit=2_000) == "short"
    assert one_line("x" * 5_000) == "x" * 5_000
    for before in range(1_990, 2_000):
        text = "x" * before + "\u200b" + "y" * 10
        kept = one_line(text, limit=2_000)
        assert len(kept) <= 2_000 and kept.endswith("…"), before
        whole = "x" * before + r"\u200b" + "y" * (1_993 - before)  # the escape before the cut
        assert kept[:-1] in ("x" * before, whole), before
    assert one_line("\u200b" * 1_000, limit=2_000) == r"\u200b" * 333 + "…"
    assert one_line("\n" * 3, limit=5) == r"\n\n…"
    huge = one_line("\x1b" * 50_000_000, limit=2_000)  # a 92 MB reason is not spelt out whole
    assert len(huge) <= 2_000


def test_the_listed_format_characters_are_unicodes():
    """The hard-coded list of invisible format characters is Unicode's category Cf, whole."""
    import sys
    import unicodedata

    from storage.quoting import FORMAT_RANGES
    listed = {c for a, b in FORMAT_RANGES for c in range(a, b + 1)}
    known = {c for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Cf"}
    assert known <= listed, sorted(known - listed)[:10]
