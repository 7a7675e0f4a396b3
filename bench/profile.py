"""Where the CPU of one hot read goes, process by process: py-spy on every Python process of the mesh
while h2load drives one route.

    python -m bench.profile --route me|inbox|connections [--seconds 10] [--attach] [--clients 32] [--rate 100]

Starts its own mesh (or, with --attach, uses the running `make up`), seeds SPEC §11's volume where
missing, logs the measured user in (as `make bench` does), runs a discarded warm-up, then drives the
route with h2load for --seconds + 1 while `py-spy record --format raw --nonblocking` samples the
gateway, every service instance and the control plane for --seconds (the extra second covers
py-spy's attach: every sample falls inside the load). CPU per request comes from /proc around the
whole h2load run.

Writes under .run/profiles/<UTC time>/:
    <process>.collapsed.txt     py-spy's raw output: collapsed stacks ("a;b;c count"), for
                                flamegraph.pl, inferno or speedscope
    profile.speedscope.json     every process as one profile of a speedscope file (speedscope.app)
    summary.txt                 what is printed: per process CPU µs/request and top functions
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import h2load
from bench.cases import build_cases, pick_user
from bench.cpu import CpuMeter
from bench.mesh import MeshProcess, login, open_mesh
from bench.seed import SEED_PASSWORD, Volume, seed_and_describe
from launcher import infra as infra_mod
from launcher.bootstrap import REPO
from launcher.keys import ensure_dev_keys

ROUTES = ("me", "inbox", "connections")
TOP = 12

LEGEND = """\
How to read this: py-spy samples Python stacks (idle threads left out), so "self" is the function
on top of the stack when sampled and "inclusive" every function on the stack below the event loop
or thread entry (Runner.run, Thread.run: they and their callers are on every stack), both in % of
the process's samples. Time inside C extensions is attributed to the nearest Python frame:
  Runner.run / run_until_complete   the event loop itself (uvloop, C: socket I/O, callbacks, timers)
  Thread.run (threading.py)         grpc's poller thread (its C core: HTTP/2, completion queue), in
                                    every process that serves or calls gRPC, the gateway included
  UnaryUnaryCall._invoke (_call.py) grpc.aio's Cython client call path (the gateway's calls, a
                                    service's calls to another)
  asyncpg, hiredis                  their C protocol parsers, under the Python code that awaited them
CPU µs/request is measured while py-spy samples (--nonblocking: the processes are not paused, but
py-spy uses CPU on the same cores): take throughput and CPU figures from make bench."""


@dataclass
class Profile:
    process: MeshProcess
    # Collapsed stack ("frame;frame;…") → samples.
    stacks: Counter[str]
    cpu_us_per_request: float


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.profile", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--route", choices=ROUTES, required=True)
    parser.add_argument("--seconds", type=int, default=10, help="seconds of sampling (10)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of the discarded warm-up run (2)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second (100)")
    parser.add_argument("--attach", action="store_true", help="profile the running `make up` (default ports)")
    parser.add_argument("--users", type=int, default=10_000, help="seeded users (10000)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    h2load.ensure_h2load()
    py_spy = py_spy_path()
    infra = infra_mod.ensure(install=True)
    keys = ensure_dev_keys()
    out_dir = REPO / ".run" / "profiles" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"[profile] output: {out_dir}", flush=True)
    with open_mesh(infra, keys, out_dir, attach=args.attach) as mesh:
        print(f"[profile] {seed_and_describe(mesh.dsns, Volume(users=args.users))}", flush=True)
        user = asyncio.run(pick_user(mesh.dsns))
        token = login(mesh.gateway_url, user.email, SEED_PASSWORD)
        case = next(
            c
            for c in build_cases(
                gateway_url=mesh.gateway_url, envoy_grpc=mesh.envoy_grpc, grpc_echo="", http_echo="", user=user,
                token=token,
            )
            if c.key == args.route
        )  # fmt: skip
        print(f"[profile] {case.title} as {user.username}: check {case.check()}", flush=True)
        targets = [p for p in mesh.processes if p.python]
        if not targets:
            raise SystemExit("no Python process of the mesh found (--attach: is it this machine's `make up`?)")
        options = case.load_options()
        if args.warmup > 0:
            h2load.run(case.title, case.url, clients=args.clients, seconds=args.warmup, warmup=0, **options)  # type: ignore[arg-type]
        result, cpu, failed = record(py_spy, targets, case.title, case.url, options, args, out_dir)
    if result.not_2xx:
        raise SystemExit(f"{result.not_2xx} answers were not 2xx: the profile is not of the route's normal path")
    profiles = [Profile(p, read_collapsed(collapsed_path(out_dir, p)), cpu.get(p.name, 0.0)) for p in targets]
    write_speedscope(out_dir / "profile.speedscope.json", profiles, f"{case.title} ({user.username})")
    text = summary(profiles, case.title, result, args)
    (out_dir / "summary.txt").write_text(text + "\n")
    print("\n" + text + f"\n\nfiles: {out_dir}")
    if failed:
        print(f"\nFAILED: py-spy could not record {', '.join(failed)} (see above)", file=sys.stderr)
        return 1
    return 0


def py_spy_path() -> str:
    candidate = Path(sys.executable).parent / "py-spy"
    if candidate.exists():
        return str(candidate)
    raise SystemExit("py-spy is missing: it is in the [dev] extra of pyproject.toml (run `make setup`)")


def collapsed_path(out_dir: Path, process: MeshProcess) -> Path:
    return out_dir / f"{process.name}.collapsed.txt"


def record(
    py_spy: str,
    targets: Sequence[MeshProcess],
    title: str,
    url: str,
    options: dict[str, object],
    args: argparse.Namespace,
    out_dir: Path,
) -> tuple[h2load.Result, dict[str, float], list[str]]:
    """h2load for seconds + 1 in a thread; py-spy on every target for `seconds` meanwhile.
    Returns h2load's result, CPU µs per request per target, and the targets py-spy failed on."""
    meter = CpuMeter({p.name: p.pid for p in targets})
    results: list[h2load.Result] = []
    load = threading.Thread(
        target=lambda: results.append(
            h2load.run(title, url, clients=args.clients, seconds=args.seconds + 1, warmup=0, **options)  # type: ignore[arg-type]
        )
    )
    load.start()
    spies = [
        subprocess.Popen(
            [
                py_spy, "record", "--pid", str(p.pid), "--duration", str(args.seconds), "--rate", str(args.rate),
                "--format", "raw", "--nonblocking", "--output", str(collapsed_path(out_dir, p)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for p in targets
    ]  # fmt: skip
    failed = []
    for spy, target in zip(spies, targets, strict=True):
        output, _ = spy.communicate(timeout=args.seconds + 60)
        if spy.returncode != 0:
            failed.append(target.name)
            print(f"[profile] py-spy on {target.name} failed: {output.decode(errors='replace')[-500:]}", flush=True)
    load.join()
    if not results:
        raise SystemExit("h2load did not finish")
    return results[0], meter.per_request_us(results[0].done), failed


# --- reading and summarising collapsed stacks ---------------------------------------------------------

FRAME = re.compile(r"^(?P<name>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def read_collapsed(path: Path) -> Counter[str]:
    stacks: Counter[str] = Counter()
    if not path.exists():
        return stacks
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[stack] += int(count)
    return stacks


def frame_key(frame: str) -> str:
    """'Runner.run (asyncio/runners.py:118)' → 'Runner.run (runners.py)': one entry per function."""
    match = FRAME.match(frame)
    if not match:
        return frame
    return f"{match['name']} ({os.path.basename(match['file'])})"


# Where a process's work hangs from: the event loop (uvloop under asyncio.run) and thread entries.
# Everything above them (runpy, main, …) and they themselves are on every stack of their thread,
# so the inclusive ranking starts below the last of them.
ENTRY_FUNCTIONS = {"Runner.run", "BaseEventLoop.run_until_complete", "Thread.run", "Thread._bootstrap_inner"}


def top_functions(stacks: Counter[str]) -> tuple[Counter[str], Counter[str]]:
    """(self samples, inclusive samples below the entry frames) per function."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for stack, count in stacks.items():
        frames = [frame_key(f) for f in stack.split(";")]
        own[frames[-1]] += count
        entries = [i for i, key in enumerate(frames) if key.split(" (")[0] in ENTRY_FUNCTIONS]
        below = frames[entries[-1] + 1 :] if entries else frames
        for key in set(below):
            inclusive[key] += count
    return own, inclusive


def summary(profiles: Sequence[Profile], title: str, result: h2load.Result, args: argparse.Namespace) -> str:
    lines = [
        f"{title}: {result.requests_per_second:.0f} req/s over {result.done} requests "
        f"(h2load -c {args.clients}, {args.seconds + 1} s; py-spy {args.rate} Hz for {args.seconds} s)",
        "",
        f"{'process':<16} {'CPU µs/req':>10} {'samples':>8}",
    ]
    for p in profiles:
        lines.append(f"{p.process.name:<16} {p.cpu_us_per_request:>10.0f} {sum(p.stacks.values()):>8}")
    for p in profiles:
        total = sum(p.stacks.values())
        if not total:
            continue
        own, inclusive = top_functions(p.stacks)
        lines += ["", f"== {p.process.name}: {p.cpu_us_per_request:.0f} µs CPU per request, {total} samples"]
        lines.append(f"  {'self %':>7}  {'top self':<58}  {'incl %':>7}  top inclusive")
        for (own_name, own_n), (inc_name, inc_n) in zip(own.most_common(TOP), inclusive.most_common(TOP), strict=False):
            lines.append(
                f"  {100 * own_n / total:>7.1f}  {own_name[:58]:<58}  {100 * inc_n / total:>7.1f}  {inc_name[:70]}"
            )
    lines += ["", LEGEND]
    return "\n".join(lines)


def write_speedscope(path: Path, profiles: Sequence[Profile], name: str) -> None:
    """All processes' samples as one speedscope file (https://www.speedscope.app/file-format-schema.json)."""
    frames: list[dict[str, object]] = []
    index: dict[str, int] = {}

    def frame_id(frame: str) -> int:
        if frame not in index:
            match = FRAME.match(frame)
            entry: dict[str, object] = {"name": match["name"] if match else frame}
            if match:
                entry["file"] = match["file"]
                if match["line"]:
                    entry["line"] = int(match["line"])
            index[frame] = len(frames)
            frames.append(entry)
        return index[frame]

    out_profiles = []
    for p in profiles:
        samples = [[frame_id(f) for f in stack.split(";")] for stack in p.stacks]
        weights = list(p.stacks.values())
        out_profiles.append(
            {
                "type": "sampled",
                "name": f"{p.process.name} ({p.cpu_us_per_request:.0f} µs CPU/request)",
                "unit": "none",
                "startValue": 0,
                "endValue": sum(weights),
                "samples": samples,
                "weights": weights,
            }
        )
    document = {
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "name": name,
        "exporter": "capsule-mesh bench.profile",
        "activeProfileIndex": 0,
        "shared": {"frames": frames},
        "profiles": out_profiles,
    }
    path.write_text(json.dumps(document))


if __name__ == "__main__":
    sys.exit(main())
