"""SPEED's log: a line per event on stderr, in one format, from the event loop and threads alike,
none lost when the loop stops right after it."""
import re
import subprocess
import sys

PROGRAM = """
import asyncio, logging, threading
from bot.logs import configure_logging
configure_logging()
log = logging.getLogger("speed.test")

async def main():
    log.info("first on the loop", extra={"deployment": 7})
    thread = threading.Thread(target=log.warning, args=("from a thread %d", 2))
    thread.start()
    thread.join()
    log.info("last, as the loop stops")

asyncio.run(main())
"""
LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) speed\.test: "
                  r"(?P<message>.+)")


def test_lines_from_the_loop_and_threads_all_come_in_the_logs_format():
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True,
                          timeout=30, check=True)
    lines = [LINE.fullmatch(line) for line in done.stderr.splitlines()]
    assert all(lines), done.stderr
    # The thread's line is written at once; the loop's at the end of its turn (or at exit,
    # for the loop's last turn).
    assert sorted((m["level"], m["message"]) for m in lines) == [
        ("INFO", "first on the loop deployment=7"),
        ("INFO", "last, as the loop stops"),
        ("WARNING", "from a thread 2"),
    ]
