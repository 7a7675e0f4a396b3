"""mesh/timing.py: the defaults keep every relation, each broken relation is named, and the
processes (services, control plane) refuse to start with an override that breaks one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from controlplane import resources as rs
from controlplane.app import ControlPlaneSettings
from controlplane.snapshot import build_snapshot

from launcher.bootstrap import REPO
from mesh.timing import TIMING, Timing, TimingError
from services.common.settings import ServiceSettings

RELATION_1 = "heartbeat ≤ lease ttl / 3"
RELATION_2 = "lease ttl + sweep interval ≤ 2 s"
RELATION_3 = "drain delay ≥ health-check interval x unhealthy threshold + health-check timeout"
RELATION_4 = "deregister confirmation bound < deregister call timeout"
RELATION_5 = "deregister confirmation bound + deregistered drain < drain delay"


def test_the_defaults_keep_every_relation() -> None:
    assert Timing().violations() == []
    assert TIMING.check() is TIMING
    assert TIMING.health_check_detection_seconds <= TIMING.drain_delay_seconds


@pytest.mark.parametrize(
    ("broken", "relation"),
    [
        (Timing(heartbeat_seconds=0.6), RELATION_1),
        # A ttl whose heartbeat follows (relation 1 holds) but that SPEC's 2 s cannot absorb.
        (TIMING.with_lease_ttl(1.95), RELATION_2),
        (Timing(drain_delay_seconds=2.5), RELATION_3),
        # Slower health checks that the drain delay did not follow.
        (Timing(health_check_interval_seconds=1.5), RELATION_3),
        (Timing(deregister_call_timeout_seconds=1.0), RELATION_4),
        (Timing(deregistered_drain_seconds=2.0), RELATION_5),
        (Timing(deregister_confirm_seconds=2.8, deregister_call_timeout_seconds=3.0), RELATION_5),
        (Timing(unhealthy_threshold=0, drain_delay_seconds=3.0), "unhealthy threshold must be positive"),
    ],
)
def test_each_broken_relation_is_named(broken: Timing, relation: str) -> None:
    (violation,) = broken.violations()  # that relation alone
    assert violation.startswith(relation), violation
    with pytest.raises(TimingError, match=relation.replace("+", r"\+")):
        broken.check()


def test_overrides_from_the_environment() -> None:
    timing = Timing.from_env(
        {"LEASE_TTL_SECONDS": "0.9", "DRAIN_DELAY_SECONDS": "4", "DEREGISTERED_DRAIN_SECONDS": "0"}
    )
    assert (timing.lease_ttl_seconds, timing.heartbeat_seconds) == (0.9, pytest.approx(0.3))
    assert (timing.drain_delay_seconds, timing.deregistered_drain_seconds) == (4.0, 0.0)
    assert timing.check() is timing
    assert Timing.from_env({}) == TIMING
    with pytest.raises(TimingError, match="DRAIN_DELAY_SECONDS='soon' is not a number"):
        Timing.from_env({"DRAIN_DELAY_SECONDS": "soon"})


def test_envoys_health_checks_are_the_timings() -> None:
    snapshot = build_snapshot({}, listen=("127.0.0.1", 10000))
    (check,) = snapshot.resources[rs.CLUSTER]["auth"].health_checks  # type: ignore[attr-defined]
    assert check.interval.ToMilliseconds() == TIMING.health_check_interval_seconds * 1000
    assert check.timeout.ToMilliseconds() == TIMING.health_check_timeout_seconds * 1000
    assert check.unhealthy_threshold.value == TIMING.unhealthy_threshold


# --- start-up -------------------------------------------------------------------------------------


def test_a_service_reads_its_drain_delays_from_the_timings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DRAIN_DELAY_SECONDS", raising=False)
    monkeypatch.delenv("DEREGISTERED_DRAIN_SECONDS", raising=False)
    settings = ServiceSettings.from_env("auth", 1, 2)
    assert settings.drain_delay_seconds == TIMING.drain_delay_seconds
    assert settings.deregistered_drain_seconds == TIMING.deregistered_drain_seconds
    monkeypatch.setenv("DRAIN_DELAY_SECONDS", "5")
    assert ServiceSettings.from_env("auth", 1, 2).drain_delay_seconds == 5.0


def test_a_service_with_a_drain_delay_shorter_than_the_health_checks_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DRAIN_DELAY_SECONDS", "1")
    with pytest.raises(SystemExit, match=RELATION_3.replace("+", r"\+")):
        ServiceSettings.from_env("auth", 1, 2)


def test_the_service_process_exits_with_the_relation_before_serving() -> None:
    env = {**os.environ, "DRAIN_DELAY_SECONDS": "1", "GRPC_LISTEN": "127.0.0.1:1", "ADMIN_LISTEN": "127.0.0.1:1"}
    result = subprocess.run(
        [sys.executable, "-m", "services.auth"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert RELATION_3 in result.stderr and "drain delay 1 s" in result.stderr, result.stderr[-2000:]


def test_the_control_plane_refuses_a_lease_ttl_that_breaks_a_relation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEASE_TTL_SECONDS", "1.2")
    settings = ControlPlaneSettings.from_env()
    assert (settings.timing.lease_ttl_seconds, settings.timing.heartbeat_seconds) == (1.2, pytest.approx(0.4))
    monkeypatch.setenv("LEASE_TTL_SECONDS", "3")
    with pytest.raises(SystemExit, match=RELATION_2.replace("+", r"\+")):
        ControlPlaneSettings.from_env()
