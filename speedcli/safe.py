"""Server text made safe for a terminal: control characters shown as visible escapes.

What SPEED returns is partly written by containers, so a progress report or a log line may carry
escape sequences that write the clipboard (OSC 52), move the cursor to forge a line, or reorder
text (bidi controls). Fields are escaped completely; log text keeps its line breaks, tabs and,
on a terminal only, its SGR colours. Backslashes are not doubled: the result is for reading, not
for parsing back.
"""
import re

# The bidirectional formatting characters: they reorder how the text around them is drawn.
_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
# Every Unicode control character (category Cc: C0, DEL, C1), the bidi controls, and the line
# and paragraph separators some terminals and viewers break lines at.
_FIELD_UNSAFE = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI}\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Select Graphic Rendition: colours and bold, nothing that moves the cursor or talks back.
_SGR = r"\x1b\[[0-9;]{0,32}m"
# In log text a complete SGR and a CRLF line end are looked at whole; any other unsafe character
# on its own (ESC of any other sequence, a lone CR, BEL, C1, bidi) is escaped.
_LOG_UNSAFE = re.compile(f"(?P<sgr>{_SGR})|(?P<crlf>\r\n)|[\x00-\x08\x0b-\x1f\x7f-\x9f{_BIDI}]")
# The end of a piece that may be the start of an SGR or a CRLF completed by the next piece.
_INCOMPLETE = re.compile(r"(\x1b(\[[0-9;]{0,32})?|\r)\Z")
_LONGEST_INCOMPLETE = 34  # ESC [ and 32 parameter characters: only the tail is searched
RESET = "\x1b[0m"


def _escape(char: str) -> str:
    """One unsafe character as a visible escape: \\n, \\x1b, \\u009b, \\u202e."""
    if char in _NAMED:
        return _NAMED[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x80 else f"\\u{ord(char):04x}"


def field(text: str) -> str:
    """text as one line that cannot move the cursor or talk to the terminal."""
    return _FIELD_UNSAFE.sub(lambda m: _escape(m[0]), text)


class LogText:
    """Log text arriving in pieces, made safe for one output stream.

    A sequence split across pieces is held back until the next piece completes it, so it is
    judged whole: ESC in one piece and `]52;…` in the next cannot slip through as two halves."""

    def __init__(self, terminal: bool):
        self.terminal = terminal  # only a terminal gets colours; files and pipes get them escaped
        self.carry = ""
        self.coloured = False

    def feed(self, piece: str) -> str:
        """The safe text of piece, less a trailing incomplete sequence kept for the next one."""
        text = self.carry + piece
        tail = _INCOMPLETE.search(text, max(0, len(text) - _LONGEST_INCOMPLETE))
        self.carry = tail[0] if tail else ""
        return self._safe(text[:len(text) - len(self.carry)])

    def flush(self) -> str:
        """What is still held back, escaped: the text has ended."""
        text, self.carry = self._safe(self.carry), ""
        return text

    def reset(self) -> str:
        """RESET if a colour let through is still on, so SPEED's own lines that follow are not
        drawn in it (or concealed by it: SGR 8 hides text)."""
        coloured, self.coloured = self.coloured, False
        return RESET if coloured else ""

    def _safe(self, text: str) -> str:
        """text with everything but line ends, tabs and (on a terminal) SGR escaped."""
        return _LOG_UNSAFE.sub(self._replace, text)

    def _replace(self, match: re.Match) -> str:
        """One match of _LOG_UNSAFE: kept, or escaped character by character."""
        if match["crlf"]:
            return match[0]
        if match["sgr"] and self.terminal:
            # Left coloured unless this is a reset (ESC[m, ESC[0m) itself.
            self.coloured = match[0] not in ("\x1b[m", "\x1b[0m")
            return match[0]
        return "".join(_escape(char) if _LOG_UNSAFE.fullmatch(char) else char
                       for char in match[0])


def log(text: str, terminal: bool) -> str:
    """Whole log text made safe: newlines, tabs and CRLF kept, SGR colours kept on a terminal
    (and reset at the end)."""
    logs = LogText(terminal)
    return logs.feed(text) + logs.flush() + logs.reset()
