"""SPEED's log: a line per event on stderr, in one format, from the event loop and threads alike,
in the order they were made, none held back or lost when a loop stops right after it."""
import re
import subprocess
import sys

PROGRAM = """
import asyncio, logging, sys, threading
from bot.logs import configure_logging
configure_logging()
log = logging.getLogger("speed.test")

async def first():
    log.info("one, as its loop stops")

loop = asyncio.new_event_loop()
loop.run_until_complete(first())  # stops before the turn that would write the line
loop.close()

async def second():
    log.info("two, on the loop", extra={"deployment": 7})
    thread = threading.Thread(target=log.info, args=("three, from a thread %d", 2))
    thread.start()
    thread.join()
    log.warning("four, a warning")
    sys.stderr.write("five, written straight after it\\n")

asyncio.run(second())
sys.stderr.write("six, after the loops\\n")
"""
LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) speed\.test: "
                  r"(?P<message>.+)")


def test_lines_from_the_loop_and_threads_come_in_order_and_in_the_logs_format():
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True,
                          timeout=30, check=True)
    lines = []
    for line in done.stderr.splitlines():
        logged = LINE.fullmatch(line)
        lines.append(f"{logged['level']} {logged['message']}" if logged else line)
    assert lines == [
        "INFO one, as its loop stops",  # written with the next loop's lines, not at exit
        "INFO two, on the loop deployment=7",
        "INFO three, from a thread 2",  # after the loop's line made before it
        "WARNING four, a warning",  # at once
        "five, written straight after it",
        "six, after the loops",
    ], done.stderr
