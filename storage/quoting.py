"""Text from builds, containers and callbacks never passes for SPEED's own lines: a line that
would show as one (`[speed] …`, `[output truncated: …`) is stored quoted, as `> [speed] …`.

What counts is what a terminal or the page shows: escape sequences and invisible characters
anywhere in the line's start are set aside before it is compared."""
import re

OWN = "[speed]"
OWN_LINES = (OWN, "[output truncated")
QUOTE = "> "
# Unicode's format characters (category Cf: zero-width spaces and joiners, bidi controls, the
# byte order mark, ...): nothing shows where they are. Listed, not computed: that takes 0.25 s.
FORMAT_RANGES = ((0x00AD, 0x00AD), (0x0600, 0x0605), (0x061C, 0x061C), (0x06DD, 0x06DD),
                 (0x070F, 0x070F), (0x0890, 0x0891), (0x08E2, 0x08E2), (0x180E, 0x180E),
                 (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x2064), (0x2066, 0x206F),
                 (0xFEFF, 0xFEFF), (0xFFF9, 0xFFFB), (0x110BD, 0x110BD), (0x110CD, 0x110CD),
                 (0x13430, 0x1343F), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0001, 0xE0001),
                 (0xE0020, 0xE007F))
_FORMAT = "".join(f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in FORMAT_RANGES)
_INVISIBLE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"                     # CSI: colours, cursor moves
    r"|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)"   # OSC, DCS, SOS, PM, APC strings
    r"|\x1b[ -/]*[0-OQ-WYZ\\`-~]"                  # the other escape sequences (ESC 7, ...)
    r"|\x1b(?:\[[0-?]*[ -/]*|[\]PX^_][^\x07\x1b]*|[ -/]*)\Z"  # one not finished yet
    r"|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f" + _FORMAT + "]")
_LINE_END = re.compile(r"(\r\n|\r|\n)")
# Past this, a line that may still become one of SPEED's is quoted rather than held longer.
MAX_OPEN = 256


def visible(text: str) -> str:
    """text as it shows: escape sequences and invisible characters left out."""
    return _INVISIBLE.sub("", text)


def _state(line: str) -> str:
    """Whether a line's start shows as SPEED's ("own"), may still ("open"), or does not."""
    shown = visible(line[:MAX_OPEN + len(OWN_LINES[-1])])  # only how the line begins matters
    if shown.startswith(OWN_LINES):
        return "own"
    return "open" if any(own.startswith(shown) for own in OWN_LINES) else "other"


def quote(text: str, at_line_start: bool = True) -> str:
    """text with `> ` before every line that would show as SPEED's own. at_line_start: whether
    text begins a line (the start of a deployment's output, or after a line end). A last line
    that may still become one is quoted too: nothing will complete it."""
    if "[" not in text:
        return text  # the common case: no line can show as SPEED's
    parts = _LINE_END.split(text)  # line, end, line, end, ..., line
    last = len(parts) - 1
    for i in range(0, len(parts), 2):
        if not (i or at_line_start):
            continue
        state = _state(parts[i])
        # An unfinished last line that shows something and may still become SPEED's is quoted;
        # a line showing nothing at all cannot pass for anything.
        if state == "own" or (i == last and state == "open" and visible(parts[i])):
            parts[i] = QUOTE + parts[i]
    return "".join(parts)


def ends_at_line_start(text: str, at_line_start: bool) -> bool:
    """Whether what follows text begins a line."""
    return text.endswith(("\n", "\r")) or (at_line_start and not text)


def open_end(text: str, at_line_start: bool) -> int:
    """How many characters at the end of text may still become the start of a line shown as
    SPEED's: they wait for more output before they are quoted or let go."""
    last = text[max(text.rfind("\n"), text.rfind("\r")) + 1:]
    if len(last) == len(text) and not at_line_start:
        return 0
    return len(last) if 0 < len(last) <= MAX_OPEN and _state(last) == "open" else 0


# What one_line spells out: control characters, format characters (zero-width, bidi controls:
# they hide or reorder what a reason shows) and the line and paragraph separators (some viewers
# break lines there).
_UNSEEN = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029" + _FORMAT + "]")
_SPELT = {"\n": "\\n", "\r": "\\r", "\t": " "}
# A character as one_line spells it out: cut before one, never through it.
_SPELT_OUT = re.compile(r"\\(?:[nr]|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})")


def _spell(char: str) -> str:
    """An unseen character as Python would write it: \\n, \\x1b, \\u200b, \\U000e0041."""
    code = ord(char)
    if char in _SPELT:
        return _SPELT[char]
    return f"\\x{code:02x}" if code < 0x100 else \
        f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def one_line(text: str, limit: int | None = None) -> str:
    """text on one line, control and format characters spelt out, and at most limit (>= 1)
    characters, cut with "…": for reasons and SPEED's own notes, which may carry an engine's
    message quoting a Dockerfile, or a key someone's `.speed.yml` names."""
    if limit is None:
        return _UNSEEN.sub(lambda m: _spell(m[0]), text)
    # What lies past limit + 1 characters cannot be kept: it need not be spelt out either.
    spelt = _UNSEEN.sub(lambda m: _spell(m[0]), text[:limit + 1])
    if len(spelt) <= limit:
        return spelt
    cut = limit - 1
    through = [m.start() for m in _SPELT_OUT.finditer(spelt, max(0, cut - 9), cut + 9)
               if m.start() < cut < m.end()]
    return spelt[:through[0] if through else cut] + "…"
