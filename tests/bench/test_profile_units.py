"""bench.profile's reading of py-spy's collapsed stacks: one entry per function (file basename),
inclusive counted below the event loop / thread entry, and the speedscope file it writes."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from bench.mesh import MeshProcess
from bench.profile import Profile, frame_key, read_collapsed, top_functions, write_speedscope

ROOT = "<module> (gateway/__main__.py:60);main (gateway/__main__.py:37);Runner.run (asyncio/runners.py:118)"
STACKS = Counter(
    {
        ROOT: 5,  # the event loop itself (uvloop's C code)
        f"{ROOT};handle (gateway/routing.py:10);encode (gateway/bodies.py:20)": 3,
        f"{ROOT};handle (gateway/routing.py:12)": 2,
        "Thread._bootstrap (threading.py:1002);Thread._bootstrap_inner (threading.py:1045);"
        "Thread.run (threading.py:982)": 4,
    }
)


def test_frame_key_drops_the_line_and_the_directories() -> None:
    assert frame_key("Runner.run (asyncio/runners.py:118)") == "Runner.run (runners.py)"
    assert frame_key("_run_code (<frozen runpy>:88)") == "_run_code (<frozen runpy>)"
    assert frame_key("no parentheses") == "no parentheses"


def test_self_and_inclusive_below_the_entry_frames() -> None:
    own, inclusive = top_functions(STACKS)
    assert own["Runner.run (runners.py)"] == 5
    assert own["Thread.run (threading.py)"] == 4
    assert own["encode (bodies.py)"] == 3
    assert own["handle (routing.py)"] == 2  # two lines of one function: one entry
    assert inclusive["handle (routing.py)"] == 5
    assert inclusive["encode (bodies.py)"] == 3
    # The entries and what calls them are on every stack of their thread: not ranked.
    assert "Runner.run (runners.py)" not in inclusive
    assert "main (__main__.py)" not in inclusive


def test_read_collapsed_and_speedscope(tmp_path: Path) -> None:
    raw = tmp_path / "gateway.collapsed.txt"
    raw.write_text("".join(f"{stack} {count}\n" for stack, count in STACKS.items()))
    stacks = read_collapsed(raw)
    assert stacks == STACKS
    out = tmp_path / "profile.speedscope.json"
    write_speedscope(out, [Profile(MeshProcess("gateway", 1), stacks, 812.0)], "GET /v1/me")
    document = json.loads(out.read_text())
    frames = document["shared"]["frames"]
    (profile,) = document["profiles"]
    assert profile["type"] == "sampled" and profile["name"].startswith("gateway (812 µs")
    assert sum(profile["weights"]) == profile["endValue"] == sum(STACKS.values())
    first = [frames[i] for i in profile["samples"][0]]
    assert first[0] == {"name": "<module>", "file": "gateway/__main__.py", "line": 60}
    assert first[-1]["name"] == "Runner.run"
