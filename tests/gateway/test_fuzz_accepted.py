"""How much of what `/openapi.json` allows the services accept (issue #18): schemathesis generates
requests in positive mode only (what the document says is valid) against the real gateway and
mesh, as a signed-up user, and most must be accepted — answered with anything but 400, 413 or 422.
A refusal of a valid-looking request means the document says less than the services enforce.

The run's HAR report gives every request and answer; each is put on its operation by the gateway's
own route table. The table printed (`-s`, or in the failure) shows, per operation, how many were
accepted and what the refusals named (reason, field: description), the to-do list of the document
(gateway/openapi.py) or of the protos' field rules. Refusals the document cannot foresee — an
unknown id (404), an unlock time too soon, a page token no list issued — count as what they are:
a 404 is accepted; a 400 is not, whatever its cause, so the figure is a floor.

Bounded (EXAMPLES per operation and phase, a fixed seed: the same cases every run);
`FUZZ_EXAMPLES=50 make test ARGS=tests/gateway/test_fuzz_accepted.py` generates more."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from gateway.descriptors import http_bindings, load_services
from gateway.routing import RouteMatch, RouteTable
from launcher.stack import Stack
from mesh.topology import gateway_proto_modules
from tests.auth.test_auth_http import sign_up

pytestmark = [pytest.mark.slow(12), pytest.mark.timeout(300)]

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or 10)
SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
# Answers that refuse the request as sent (422: what other servers say for a body they cannot take).
REFUSED = frozenset({400, 413, 422})
# The floor: a share below it fails the test (the document allows mostly what the services refuse).
MIN_ACCEPTED = 0.5


@dataclass
class Tally:
    accepted: int = 0
    refused: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    causes: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return self.accepted + self.refused


async def test_most_generated_requests_are_accepted(client: httpx.AsyncClient, stack: Stack, tmp_path: Path) -> None:
    session = await sign_up(client)
    har = tmp_path / "positive.har"
    fuzz = await asyncio.create_subprocess_exec(
        SCHEMATHESIS, "run", f"{stack.gateway_url}/openapi.json",
        "--header", f"Authorization: Bearer {session['accessToken']}",
        "--mode", "positive",
        # Only what is needed to record every answer; what an answer may be is test_fuzz_openapi's.
        "--checks", "not_a_server_error",
        "--max-examples", str(EXAMPLES),
        "--seed", "20261130",
        "--no-color",
        "--report", "har",
        "--report-har-path", str(har),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await fuzz.communicate()
    report = out.decode(errors="replace")
    assert har.exists(), report[-4000:]

    tallies = tally(json.loads(har.read_text())["log"]["entries"])
    accepted = sum(t.accepted for t in tallies.values())
    total = sum(t.total for t in tallies.values())
    table = render(tallies)
    print(table)
    assert total > 0, report[-4000:]
    share = accepted / total
    print(f"accepted {accepted} of {total} generated requests: {share:.1%}")
    assert share > MIN_ACCEPTED, f"only {share:.1%} of {total} generated requests were accepted\n{table}"


def tally(entries: list[dict[str, Any]]) -> dict[str, Tally]:
    """Per operation ("POST /v1/capsules"), the answers to the requests schemathesis made."""
    routes = RouteTable(http_bindings(load_services(gateway_proto_modules().split(","))))
    tallies: dict[str, Tally] = defaultdict(Tally)
    for entry in entries:
        request, response = entry["request"], entry["response"]
        status = int(response.get("status") or 0)
        if status == 0:
            continue  # no answer (a transport error): nothing to count
        method = request["method"].upper()
        path = urlsplit(request["url"]).path
        match = routes.resolve(method, path)
        name = f"{method} {match.route.binding.template}" if isinstance(match, RouteMatch) else f"{method} (no route)"
        counted = tallies[name]
        counted.statuses[status] += 1
        if status in REFUSED:
            counted.refused += 1
            counted.causes[cause(response)] += 1
        else:
            counted.accepted += 1
    return dict(sorted(tallies.items(), key=lambda item: item[0].split(" ", 1)[::-1]))


def cause(response: dict[str, Any]) -> str:
    """What a refusal named: its reason and its field violations."""
    text = (response.get("content") or {}).get("text") or ""
    try:
        problem = json.loads(text)
    except ValueError:
        return text[:80] or "(no body)"
    if not isinstance(problem, dict):
        return text[:80]
    violations = problem.get("fieldViolations") or []
    named = "; ".join(f"{v.get('field')}: {v.get('description')}" for v in violations if isinstance(v, dict))
    return f"{problem.get('reason')} {named or problem.get('detail', '')}".strip()


def render(tallies: dict[str, Tally]) -> str:
    width = max((len(name) for name in tallies), default=10)
    lines = [f"{'operation':<{width}}  accepted  refused  statuses", "-" * (width + 40)]
    for name, counted in tallies.items():
        statuses = " ".join(f"{status}x{n}" for status, n in sorted(counted.statuses.items()))
        lines.append(f"{name:<{width}}  {counted.accepted:>8}  {counted.refused:>7}  {statuses}")
        for text, n in counted.causes.most_common(5):
            lines.append(f"{'':<{width}}    {n:>3}x {text[:160]}")
    accepted = sum(t.accepted for t in tallies.values())
    refused = sum(t.refused for t in tallies.values())
    lines.append("-" * (width + 40))
    lines.append(f"{'all':<{width}}  {accepted:>8}  {refused:>7}")
    return "\n".join(lines)
