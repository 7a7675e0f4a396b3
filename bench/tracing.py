"""What tracing costs: GET /v1/me through the gateway with tracing off, sampled at 1 % and at
100 %, in one run (issue 14).

    python -m bench.tracing [--seconds 10] [--warmup 2] [--clients 32]

Each mode gets a mesh of its own (launcher.stack, the bench's raised rate limits, one auth
instance), started with the standard OpenTelemetry variables every process reads
(services/common/tracing.py): off — none set, so nothing is instrumented; 1 % and 100 % —
OTEL_EXPORTER_OTLP_ENDPOINT naming bench.otlp_sink (a receiver that keeps nothing, started once for
the run: its own CPU is not the mesh's), OTEL_TRACES_SAMPLER=parentbased_traceidratio with the
ratio as OTEL_TRACES_SAMPLER_ARG. The gateway makes the sampling decision (it starts the trace),
the services follow it. h2load drives GET /v1/me over HTTP/1.1 (32 clients, one request in flight
each) after a warm-up run; CPU per request is read from /proc for the gateway, the auth instance
and Envoy. Every figure comes from the same run, against the 'off' column as the baseline.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from bench import h2load
from bench.cpu import CpuMeter
from bench.getme import ok_getme_count, sign_up
from bench.mesh import BENCH_RATE_LIMITS
from launcher import infra as infra_mod
from launcher.keys import KeyPair, ensure_dev_keys
from launcher.process import ManagedProcess, free_port, port_open
from launcher.stack import Stack, StackSettings

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mode:
    name: str
    ratio: float | None  # None: tracing off

    def env(self, sink: str) -> dict[str, str]:
        if self.ratio is None:
            return {}
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{sink}",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": f"{self.ratio:g}",
        }


MODES = (Mode("off", None), Mode("sampled 1 %", 0.01), Mode("sampled 100 %", 1.0))


@dataclass
class Measured:
    mode: Mode
    result: h2load.Result
    cpu_us: dict[str, float]

    @property
    def mesh_us(self) -> float:
        return sum(self.cpu_us.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    h2load.ensure_h2load()
    infra = infra_mod.ensure(install=True)
    keys = ensure_dev_keys()
    work_dir = REPO / ".run" / "bench-tracing"

    sink_address = f"127.0.0.1:{free_port()}"
    host, _, port = sink_address.rpartition(":")
    sink = ManagedProcess(
        "otlp-sink",
        [sys.executable, "-m", "bench.otlp_sink", sink_address],
        env=dict(os.environ),
        log_path=work_dir / "otlp-sink.log",
        ready=lambda: port_open(host, int(port)),
    )
    sink.start().wait_ready(30.0)
    measured: list[Measured] = []
    try:
        for mode in MODES:
            measured.append(measure(mode, infra, keys, work_dir, sink_address, args))
    finally:
        sink.stop()
    report(measured, args, (work_dir / "otlp-sink.log").read_text().strip().splitlines()[-1:])


def measure(
    mode: Mode, infra: infra_mod.Infra, keys: KeyPair, work_dir: Path, sink: str, args: argparse.Namespace
) -> Measured:
    otel = mode.env(sink)
    settings = StackSettings.for_tests(
        infra,
        keys,
        work_dir=work_dir / mode.name.replace(" ", "-").replace("%", "pct"),
        log_level="WARNING",
        instances={"auth": 1},
        gateway_env={**BENCH_RATE_LIMITS, **otel},
        service_env=otel,
    )
    with Stack(settings) as stack:
        token = sign_up(stack.gateway_url)
        url = f"{stack.gateway_url}/v1/me"
        options = {"headers": {"authorization": f"Bearer {token}"}, "http1": True}
        admins = [inst.admin_address for inst in stack.instances["auth"]]
        pids = {"gateway": _pid(stack.gateway), "envoy": _pid(stack.envoy)}
        pids.update({inst.name: _pid(inst.process) for inst in stack.instances["auth"]})
        h2load.run(mode.name, url, clients=args.clients, seconds=args.warmup, warmup=0, **options)  # type: ignore[arg-type]
        before = ok_getme_count(admins)
        meter = CpuMeter(pids)
        result = h2load.run(mode.name, url, clients=args.clients, seconds=args.seconds, warmup=0, **options)  # type: ignore[arg-type]
        cpu = meter.per_request_us(result.succeeded)
        answered = ok_getme_count(admins) - before
        if result.failed or answered < result.succeeded:
            raise SystemExit(f"{mode.name}: {result.failed} failed; h2load saw {result.succeeded} OK, auth {answered}")
    return Measured(mode, result, cpu)


def report(measured: list[Measured], args: argparse.Namespace, sink_summary: list[str]) -> None:
    off = measured[0]
    print()
    print(
        f"GET /v1/me through the gateway, {args.clients} clients, {args.seconds} s each after {args.warmup} s "
        "warm-up, one mesh per mode; load from h2load on the same cores"
    )
    print(f"{'':<24}" + "".join(f"{m.mode.name:>16}" for m in measured))
    rows: list[tuple[str, list[str]]] = [
        ("req/s", [f"{m.result.requests_per_second:.0f}" for m in measured]),
        ("p50 ms", [f"{m.result.p50_ms:.2f}" for m in measured]),
        ("p99 ms", [f"{m.result.p99_ms:.2f}" for m in measured]),
        ("failed", [str(m.result.failed) for m in measured]),
        ("req/s vs off", [f"{m.result.requests_per_second / off.result.requests_per_second:.2f}" for m in measured]),
    ]
    for process in off.cpu_us:
        rows.append((f"CPU µs/req {process}", [f"{m.cpu_us.get(process, 0.0):.0f}" for m in measured]))
    rows.append(("CPU µs/req mesh", [f"{m.mesh_us:.0f}" for m in measured]))
    rows.append(("  more than off", [f"{m.mesh_us - off.mesh_us:+.0f}" for m in measured]))
    for label, values in rows:
        print(f"{label:<24}" + "".join(f"{v:>16}" for v in values))
    if sink_summary:
        print(f"\nOTLP receiver: {sink_summary[0]}")


def _pid(process: object) -> int:
    pid = getattr(process, "pid", None)
    assert isinstance(pid, int), process
    return pid


if __name__ == "__main__":
    main()
