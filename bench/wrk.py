"""wrk runs, and what they print read back: requests per second, latency percentiles, errors."""
import re
import subprocess

UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _seconds(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(number) * UNITS[unit]


def parse(output: str) -> dict:
    """wrk --latency's report as numbers (latencies in ms)."""
    found = {"requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
             "requests": int(re.search(r"(\d+) requests in", output).group(1))}
    for p, value in re.findall(r"^\s+(50|90|99)(?:\.000)?%\s+(\S+)$", output, re.MULTILINE):
        found[f"p{p}_ms"] = round(_seconds(value) * 1000, 3)
    # Answers other than 2xx/3xx, and socket errors: a run with any is not a fair number.
    if match := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output):
        found["non_2xx"] = int(match.group(1))
    if match := re.search(r"Socket errors: (.*)$", output, re.MULTILINE):
        found["socket_errors"] = match.group(1).strip()
    return found


def run(url: str, threads: int, connections: int, seconds: int) -> dict:
    """wrk -t -c -d --latency against url."""
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    output = subprocess.run(command, capture_output=True, text=True, check=True,
                            timeout=seconds + 60).stdout
    try:
        return parse(output)
    except AttributeError:  # a line it always prints was missing
        raise RuntimeError(f"cannot read wrk's output:\n{output}") from None
