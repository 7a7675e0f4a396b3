"""Proto → JSON bytes per message: json_format (the old path) against gateway.message_json.

    python -m bench.json_encoding [--rounds 9] [--seconds 0.3]

Two responses with realistic values: GetMe's User, and an inbox page (ListCapsulesResponse of 20
capsules, each with a sender profile and up to four timestamps, about 13 KB of JSON). Both paths
end in `orjson.dumps`, as `Transcoder.response_json` does; their bytes are checked equal first.
Old and new run interleaved, `--rounds` times, each for about `--seconds`; the medians are
printed (the machine is shared: compare within one run).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable

import orjson
from capsule.auth.v1 import auth_pb2
from capsule.capsules.v1 import capsules_pb2
from capsule.common.v1 import common_pb2
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

from gateway.message_json import MessageEncoder


def _time(seconds: int, micros: int = 0) -> timestamp_pb2.Timestamp:
    # Postgres keeps microseconds: that is what the services put in their timestamps.
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=micros * 1000)


def user() -> auth_pb2.User:
    return auth_pb2.User(
        id="0193a0c4-7a7e-7cc1-9c51-5f0d2b8e1a00",
        email="ada.lovelace@example.com",
        username="ada.lovelace",
        first_name="Ada",
        last_name="Lovelace",
        avatar_url="https://cdn.example.com/avatars/0193a0c4-7a7e-7cc1-9c51-5f0d2b8e1a00.png",
        country="GB",
        created_at=_time(1_760_000_000, 123_456),
        updated_at=_time(1_761_234_567, 654_321),
    )


def inbox_page(rows: int = 20) -> capsules_pb2.ListCapsulesResponse:
    capsules = []
    for i in range(rows):
        status = (
            capsules_pb2.CAPSULE_STATUS_SEALED,
            capsules_pb2.CAPSULE_STATUS_READY,
            capsules_pb2.CAPSULE_STATUS_OPENED,
        )[i % 3]
        sealed = status == capsules_pb2.CAPSULE_STATUS_SEALED
        capsule = capsules_pb2.Capsule(
            id=f"0193a0c5-{i:04x}-7cc1-9c51-5f0d2b8e{i:04x}",
            sender_id=f"0193a0c4-7a7e-7cc1-9c51-5f0d2b8e{i % 5:04x}",
            sender=common_pb2.PublicProfile(
                id=f"0193a0c4-7a7e-7cc1-9c51-5f0d2b8e{i % 5:04x}",
                username=f"friend.{i % 5}",
                first_name="Grace",
                last_name="Hopper",
                avatar_url=f"https://cdn.example.com/avatars/friend-{i % 5}.png",
            ),
            recipient_user_id="0193a0c4-7a7e-7cc1-9c51-5f0d2b8e1a00",
            title=f"For your birthday, year {2030 + i}",
            body="" if sealed else "Dear Ada, " + "the engine works. " * 20,
            theme_id="sunset" if i % 2 else "",
            unlocks_at=_time(1_900_000_000 + i * 86_400 * 7),  # whole minutes chosen by the sender
            anonymous=i % 4 == 0,
            reveal_delay_seconds=21_600,
            status=status,
            sender_hidden=i % 8 == 0,
            created_at=_time(1_760_000_000 + i * 3_601, 100_000 + i * 7_919),
            updated_at=_time(1_760_000_000 + i * 3_601, 100_000 + i * 7_919),
        )
        if status == capsules_pb2.CAPSULE_STATUS_OPENED:
            capsule.opened_at.CopyFrom(_time(1_910_000_000 + i * 977, 5_000 + i))
        capsules.append(capsule)
    return capsules_pb2.ListCapsulesResponse(capsules=capsules, next_page_token="Cg5pbmJveBIPCg0Iwe2XvwYQ4JWbAQ")


def reference(message: Message) -> bytes:
    return orjson.dumps(json_format.MessageToDict(message, always_print_fields_with_no_presence=True))


def prepared(message: Message) -> Callable[[Message], bytes]:
    encoder = MessageEncoder(message.DESCRIPTOR)
    return lambda m: orjson.dumps(encoder(m))


def per_message_us(encode: Callable[[Message], bytes], message: Message, seconds: float) -> float:
    """µs per call, over as many calls as fit in about `seconds`."""
    calls = 1
    while True:
        gc.collect()
        started = time.perf_counter()
        for _ in range(calls):
            encode(message)
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return elapsed / calls * 1e6
        calls = max(calls * 2, int(calls * seconds / max(elapsed, 1e-6) * 1.1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--seconds", type=float, default=0.3)
    args = parser.parse_args()

    cases = {"GetMe User": user(), "ListCapsules, 20 rows": inbox_page()}
    encoders = {name: (reference, prepared(message)) for name, message in cases.items()}
    for name, message in cases.items():
        old, new = encoders[name]
        if old(message) != new(message):
            raise SystemExit(f"{name}: the new encoder's bytes differ from json_format's")

    timings: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in cases}
    for round_ in range(args.rounds):
        for name, message in cases.items():
            old, new = encoders[name]
            pair = [(old, timings[name][0]), (new, timings[name][1])]
            for encode, results in pair if round_ % 2 == 0 else reversed(pair):
                results.append(per_message_us(encode, message, args.seconds))

    print(f"median of {args.rounds} interleaved rounds, µs per message (json_format + orjson → new + orjson)")
    print(f"{'message':<24}{'bytes':>7}{'json_format':>13}{'new':>9}{'speed-up':>10}   old / new per round")
    for name, message in cases.items():
        old_us, new_us = timings[name]
        old_median, new_median = statistics.median(old_us), statistics.median(new_us)
        ratios = statistics.median(o / n for o, n in zip(old_us, new_us, strict=True))
        print(
            f"{name:<24}{len(reference(message)):>7}{old_median:>13.1f}{new_median:>9.1f}"
            f"{old_median / new_median:>9.2f}x   median {ratios:.2f}x"
        )


if __name__ == "__main__":
    main()
