"""The proxyless gateway's hedging (gateway/upstream.py `hedged`) against a real grpc.aio server
on a real socket: each call's behaviour is scripted in the order the server receives them (slow,
failing, answering), and the server records which calls ran to completion or were cancelled."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message

from gateway.upstream import HedgeBudget, hedged

METHOD = "/test.Hedging/Echo"
SHORT = (0.05, 0.1, 0.2)  # hedge delays of these tests: attempts at 0, 0.05, 0.15 and 0.35 s


@dataclass
class Script:
    """What the server does with its n-th call: ("sleep", s) then answer, or ("fail", code)."""

    steps: list[tuple[str, object]] = field(default_factory=list)
    received = 0
    cancelled = 0
    answered: list[int] = field(default_factory=list)

    async def handle(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        n = self.received
        self.received += 1
        action, value = self.steps[n] if n < len(self.steps) else ("sleep", 0.0)
        if action == "fail":
            await context.abort(value, f"call {n} fails")  # type: ignore[arg-type]
        try:
            await asyncio.sleep(float(value))  # type: ignore[arg-type]  # the scripted slowness
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.answered.append(n)
        return wrappers_pb2.Int32Value(value=n).SerializeToString()


@pytest.fixture
async def served() -> AsyncIterator[tuple[Script, grpc.aio.UnaryUnaryMultiCallable]]:
    script = Script()
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(script.handle)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Hedging", {"Echo": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    call = channel.unary_unary(
        METHOD,
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=wrappers_pb2.Int32Value.FromString,
    )
    try:
        yield script, call
    finally:
        await channel.close()
        await server.stop(None)


def sender(call: grpc.aio.UnaryUnaryMultiCallable) -> object:
    return lambda timeout: call(wrappers_pb2.Int32Value(), timeout=timeout)


async def ask(call: grpc.aio.UnaryUnaryMultiCallable, budget: HedgeBudget | None = None) -> tuple[Message, float]:
    started = time.monotonic()
    answer = await hedged(sender(call), 5.0, METHOD, budget or HedgeBudget(), SHORT)  # type: ignore[arg-type]
    return answer, time.monotonic() - started


async def test_a_fast_answer_sends_no_hedge(served: tuple[Script, grpc.aio.UnaryUnaryMultiCallable]) -> None:
    script, call = served
    answer, _ = await ask(call)
    assert answer == wrappers_pb2.Int32Value(value=0)
    assert script.received == 1


async def test_a_slow_call_is_hedged_and_the_loser_cancelled(
    served: tuple[Script, grpc.aio.UnaryUnaryMultiCallable],
) -> None:
    script, call = served
    script.steps = [("sleep", 3.0), ("sleep", 0.0)]
    answer, took = await ask(call)
    assert answer == wrappers_pb2.Int32Value(value=1)  # the hedge's answer
    assert 0.05 <= took < 1.0
    await wait_for(lambda: script.cancelled == 1)  # the slow first call does not run on
    assert script.answered == [1]


async def test_hedges_go_on_while_every_attempt_hangs(served: tuple[Script, grpc.aio.UnaryUnaryMultiCallable]) -> None:
    """A hedge may land on the same bad instance: the next ones, further apart, go out too."""
    script, call = served
    script.steps = [("sleep", 3.0), ("sleep", 3.0), ("sleep", 3.0), ("sleep", 0.0)]
    answer, took = await ask(call)
    assert answer == wrappers_pb2.Int32Value(value=3)
    assert 0.35 <= took < 1.5
    await wait_for(lambda: script.cancelled == 3)


async def test_a_service_answer_is_returned_at_once(served: tuple[Script, grpc.aio.UnaryUnaryMultiCallable]) -> None:
    """NOT_FOUND is the service's answer, not a failed attempt: no hedge waits for another."""
    script, call = served
    script.steps = [("fail", grpc.StatusCode.NOT_FOUND)]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await ask(call)
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND
    assert script.received == 1


async def test_a_failed_attempt_leaves_the_other_to_answer(
    served: tuple[Script, grpc.aio.UnaryUnaryMultiCallable],
) -> None:
    script, call = served
    script.steps = [("sleep", 0.2), ("fail", grpc.StatusCode.UNAVAILABLE), ("sleep", 3.0), ("sleep", 3.0)]
    answer, took = await ask(call)
    assert answer == wrappers_pb2.Int32Value(value=0)  # the slow first one: a hedge failed, the next hang
    assert 0.2 <= took < 1.0
    assert script.received >= 3


async def test_when_every_attempt_fails_the_first_error_is_raised(
    served: tuple[Script, grpc.aio.UnaryUnaryMultiCallable],
) -> None:
    script, call = served
    script.steps = [("fail", grpc.StatusCode.UNAVAILABLE)]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await ask(call)
    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
    assert script.received == 1  # it failed before any hedge was due


async def test_no_hedge_beyond_the_budget(served: tuple[Script, grpc.aio.UnaryUnaryMultiCallable]) -> None:
    script, call = served
    script.steps = [("sleep", 0.5)]
    budget = HedgeBudget(percent=0.0, minimum=0)  # no room for any extra attempt
    answer, took = await ask(call, budget)
    assert answer == wrappers_pb2.Int32Value(value=0)
    assert script.received == 1 and took >= 0.5
    assert budget.calls == 0 and budget.extra == 0  # all given back


async def wait_for(condition: object, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)  # polling the server's record
