"""Text from builds, containers and callbacks never passes for SPEED's own `[speed]` lines."""
import re

OWN = "[speed]"
QUOTE = "> "
# What a terminal or the page does not show at the start of a line: escape sequences (colours,
# cursor moves, OSC titles) and control characters other than line ends.
_INVISIBLE = (r"(?:\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b\r\n]*(?:\x07|\x1b\\)"
              r"|\x1b[@-Z\\^_]|[\x00-\x09\x0b\x0c\x0e-\x1f\x7f-\x9f])")
_FORGED = re.compile(r"(^|[\r\n])(" + _INVISIBLE + r"*)" + re.escape(OWN))
_BLANK = re.compile(_INVISIBLE + r"*\Z")
# The end of a line that shows nothing yet and may still become `[speed]`: an escape sequence
# not finished yet, or the beginning of `[speed]` itself.
_OPEN = re.compile(_INVISIBLE + r"*(\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b\r\n]*)?|" + "|".join(
    re.escape(OWN[:n]) for n in range(len(OWN) - 1, 0, -1)) + r")\Z")
# Past this, an unfinished escape sequence is let go: output is never held without bound.
MAX_OPEN = 256


def quote(text: str, at_line_start: bool = True) -> str:
    """text with every line that would begin with `[speed]` quoted as `> [speed]`.

    at_line_start: whether text continues a line that shows nothing yet (the start of a
    deployment's output, or after a line end)."""
    if OWN not in text:
        return text
    marked = ("\n" if at_line_start else "x") + text  # so that the first line is matched alike
    return _FORGED.sub(lambda m: m.group(1) + m.group(2) + QUOTE + OWN, marked)[1:]


def _last_line(text: str) -> str:
    """What follows the last line end in text (all of it if there is none)."""
    return text[max(text.rfind("\n"), text.rfind("\r")) + 1:]


def ends_at_line_start(text: str, at_line_start: bool) -> bool:
    """Whether what follows text would begin a line that shows nothing yet."""
    last = _last_line(text)
    if len(last) == len(text) and not at_line_start:
        return False
    return _BLANK.match(last) is not None


def open_end(text: str, at_line_start: bool) -> int:
    """How many characters at the end of text could be the beginning of a forged `[speed]`:
    they must wait for the next piece of output before they can be quoted or let go."""
    last = _last_line(text)
    if len(last) == len(text) and not at_line_start:
        return 0
    found = _OPEN.match(last) if last else None
    return len(found.group(1)) if found and len(found.group(1)) <= MAX_OPEN else 0
