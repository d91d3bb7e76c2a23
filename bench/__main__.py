"""python -m bench [--only deploys,requests,services,replicas]: SPEED beside raw counterparts."""
# Each part measured replaces its own section of bench/results.json (the others stay as the
# last run left them); the README's table is then written again from the whole file.
import argparse
import datetime
import json
import pathlib
import sys
import time

from bench import deploys, readme, replicas, requests, services
from bench.common import load_average, wait_for_quiet

RESULTS = pathlib.Path(__file__).parent / "results.json"


def _services() -> dict:
    """Push to live and the proxy's latency (bench/services.py, as it is)."""
    return services.measure()


def _replicas() -> dict:
    """SQLite against 1 and 3 PostgreSQL replicas (bench/replicas.py, as it is)."""
    return replicas.measure()["replicas"]


PARTS = {"deploys": deploys.measure, "requests": requests.measure, "services": _services,
         "replicas": _replicas}
def _previous() -> dict:
    """The results of earlier runs, by part."""
    if not RESULTS.exists():
        return {}
    old = json.loads(RESULTS.read_text())
    return {name: old[name] for name in PARTS if name in old}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", default=",".join(PARTS),
                        help=f"comma-separated parts to run (default all: {','.join(PARTS)})")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in PARTS]
    if unknown or not chosen:
        parser.error(f"unknown part(s) {', '.join(unknown)}: choose among {', '.join(PARTS)}")
    results = _previous()
    for name in chosen:
        # The machine may be shared: its load says how far to trust each part's numbers.
        quiet_after = wait_for_quiet()
        load, started = load_average(), time.monotonic()
        section = PARTS[name]()
        section.setdefault("load_average_1m_before", load)
        section.setdefault("load_average_1m_after", load_average())
        section["run_seconds"] = round(time.monotonic() - started, 1)
        section["waited_for_quiet_s"] = quiet_after
        section["finished_at"] = datetime.datetime.now().isoformat(timespec="seconds")
        results[name] = section
        # Written after each part: a later part's failure loses nothing measured before it.
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        readme.update(results)
        print(f"bench: {name} done in {section['run_seconds']} s", file=sys.stderr)
    print(readme.table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
