"""`make capacity` (= `python3 -m launcher capacity` = `python -m bench.capacity`): the capacity model.

    python -m bench.capacity [--results PATH] [--traffic PATH] [--users 100000,1000000]

Reads the measured cost per request (CPU µs per process kind, database reads on the primary and
the replicas) from --results: by default the newest .run/bench/*/results.json, else the committed
bench/capacity/measured.json (a real `make bench` run, its provenance inside); takes the traffic
model from --traffic (bench/capacity/traffic.toml: every assumption); prints the inputs, then one
plan per user count (bench/capacity/model.py). Runs no mesh and needs no database.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path

from bench.capacity.model import load_measured, load_traffic, plan, render_inputs, render_plan

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
MEASURED = HERE / "measured.json"
TRAFFIC = HERE / "traffic.toml"


def default_results(repo: Path = REPO) -> Path:
    """The newest bench run's results.json, else the committed measured.json."""
    runs = sorted((repo / ".run" / "bench").glob("*/results.json"))
    return runs[-1] if runs else MEASURED


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.capacity", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", type=Path, help="a bench results.json (newest run, else measured.json)")
    parser.add_argument("--traffic", type=Path, default=TRAFFIC, help="the traffic model (bench/capacity/traffic.toml)")
    parser.add_argument("--users", help="concurrent users, comma-separated (the traffic model's: 100000,1000000)")
    args = parser.parse_args(argv)
    if args.users is not None:
        try:
            args.users = [int(u.replace("_", "")) for u in args.users.split(",") if u.strip()]
        except ValueError:
            parser.error(f"--users: whole numbers, comma-separated (got {args.users!r})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    path = args.results or default_results()
    data = json.loads(path.read_text())
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    source = str(shown)
    if "provenance" in data:
        prov = data["provenance"]
        source += f" ({prov['command']}, {prov['run_at']}, commit {prov['commit'][:12]})"
    measured = load_measured(data, source)
    traffic = load_traffic(tomllib.loads(args.traffic.read_text()))
    lines = render_inputs(measured, traffic)
    lines[0] += f"\ntraffic:  {args.traffic.relative_to(REPO) if args.traffic.is_relative_to(REPO) else args.traffic}"
    for users in args.users or traffic.users:
        lines += ["", *render_plan(plan(measured, traffic, users), traffic)]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
