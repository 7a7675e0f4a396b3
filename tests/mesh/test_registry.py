"""Leases with a fake clock: expiry, heartbeats, replacement, change notifications, holders."""

from __future__ import annotations

import base64

import pytest
from controlplane.registry import NotLeaseHolder, Registry


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_register_heartbeat_expire_and_deregister() -> None:
    clock = Clock()
    changes: list[int] = []
    reg = Registry(ttl=1.5, clock=clock)
    reg.subscribe(lambda: changes.append(1))
    a = reg.register("auth", "127.0.0.1", 5001, "z1", {"instance": "auth-0"})
    b = reg.register("auth", "127.0.0.1", 5002)
    assert [e.address for e in reg.endpoints()["auth"]] == ["127.0.0.1:5001", "127.0.0.1:5002"]
    assert len(changes) == 2
    for _ in range(4):  # a heartbeats every ttl/3 as instances do, b no more
        clock.now += 0.5
        assert reg.heartbeat(a.lease_id)
    assert [e.address for e in reg.expire()] == ["127.0.0.1:5002"]
    assert not reg.heartbeat(b.lease_id)  # lapsed: the instance must register again
    assert len(changes) == 3
    assert reg.expire() == []  # nothing lapsed: no change notification
    assert len(changes) == 3
    assert reg.deregister(a.lease_id) is not None
    assert reg.deregister(a.lease_id) is None
    assert reg.endpoints() == {}


def test_a_lapsed_lease_is_refused_even_before_the_sweep() -> None:
    clock = Clock()
    reg = Registry(ttl=1.0, clock=clock)
    lease = reg.register("auth", "h", 1)
    clock.now += 1.0
    assert not reg.heartbeat(lease.lease_id)
    assert reg.endpoints() == {}


def test_registering_an_address_again_replaces_its_lease() -> None:
    reg = Registry(ttl=1.0, clock=Clock())
    first = reg.register("auth", "h", 1, "z1")
    second = reg.register("auth", "h", 1, "z2")
    assert first.lease_id != second.lease_id
    assert [(e.address, e.zone) for e in reg.endpoints()["auth"]] == [("h:1", "z2")]
    assert not reg.heartbeat(first.lease_id)


@pytest.mark.parametrize(("service", "host", "port"), [("", "h", 1), ("auth", "", 1), ("auth", "h", 0)])
def test_invalid_instances_are_refused(service: str, host: str, port: int) -> None:
    with pytest.raises(ValueError):
        Registry(ttl=1.0).register(service, host, port)


def test_only_the_holder_renews_ends_or_replaces_a_lease() -> None:
    clock = Clock()
    changes: list[int] = []
    reg = Registry(ttl=1.0, clock=clock)
    lease = reg.register("auth", "h", 1, holder="auth")
    reg.subscribe(lambda: changes.append(1))
    clock.now += 0.5
    for act in (
        lambda: reg.heartbeat(lease.lease_id, holder="recipients"),
        lambda: reg.heartbeat(lease.lease_id),  # no identity is not the holder's identity
        lambda: reg.deregister(lease.lease_id, holder="recipients"),
        lambda: reg.register("auth", "h", 1, holder="recipients"),
    ):
        with pytest.raises(NotLeaseHolder):
            act()
    assert reg.leases() == [lease] and lease.expires_at == 101.0 and changes == []
    assert reg.heartbeat(lease.lease_id, holder="auth")
    assert reg.deregister(lease.lease_id, holder="auth") is not None


def test_lease_ids_are_random_not_counted() -> None:
    reg = Registry(ttl=1.0)
    ids = [reg.register("auth", "h", port).lease_id for port in range(1, 65)]
    assert len(set(ids)) == 64
    assert all(len(base64.urlsafe_b64decode(i + "==")) >= 16 for i in ids)  # 128 random bits, no counter


def test_a_registry_that_hears_nobody_keeps_every_lease_then_gives_each_a_ttl() -> None:
    """The control plane cut off: every lease lapses, but a silence of the whole mesh is the
    control plane's outage, not every instance dying at once. Heard again, each lease gets a
    whole ttl to be renewed; one that is not, while the others are, lapses as usual."""
    clock = Clock()
    reg = Registry(ttl=1.5, clock=clock)
    a, b, c = (reg.register("auth", "h", port) for port in (1, 2, 3))
    clock.now += 5.0
    assert reg.deaf() and reg.expire() == []
    assert len(reg.endpoints()["auth"]) == 3
    assert reg.heartbeat(a.lease_id)  # heard again: a lapsed lease of a live instance is renewed
    assert not reg.deaf()
    for step in (0.5, 0.5, 0.4):  # a and c heartbeat again, b does not
        clock.now += step
        assert reg.heartbeat(a.lease_id) and reg.heartbeat(c.lease_id)
        assert reg.expire() == []  # b within the ttl it got when the silence ended
    clock.now += 0.2
    assert reg.heartbeat(a.lease_id) and reg.heartbeat(c.lease_id)
    assert [e.port for e in reg.expire()] == [2]
    assert not reg.heartbeat(b.lease_id)


def test_one_instance_dying_while_the_others_heartbeat_leaves_within_a_ttl() -> None:
    clock = Clock()
    reg = Registry(ttl=1.5, clock=clock)
    live, dead = reg.register("auth", "h", 1), reg.register("auth", "h", 2)
    del dead
    for _ in range(3):
        clock.now += 0.5
        assert reg.heartbeat(live.lease_id)
    assert [e.port for e in reg.expire()] == [2]
