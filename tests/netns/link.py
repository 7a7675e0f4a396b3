"""A network link whose delay can be set at run time: two TAP devices and this process relaying
Ethernet frames between them, holding back those that leave the host by `delay` seconds.

What `tc qdisc … netem delay` does in the kernel, in user space: this machine's kernel is built
without netem (CONFIG_NET_SCH_NETEM is not set, nor any other delaying qdisc), while TAP devices
are there everywhere. tests/netns/network.py puts one device on the hosts' bridge and moves the
other into the host's namespace as its eth0; everything the host sends or receives crosses this
process.

    python -m tests.netns.link <outside-tap> <inside-tap>

Prints "ready" once both devices exist (the caller then wires them), then reads commands on
stdin, one per line, and answers each with "ok" once it applies:

    delay <seconds>     frames leaving the host wait this long (0: none); order is kept

Exits when stdin closes; the devices, not persistent, go with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import struct
import sys

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
# An Ethernet frame at the devices' MTU (1500) fits many times over.
READ_SIZE = 65536


def open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


class Link:
    def __init__(self, outside: int, inside: int) -> None:
        self.outside = outside
        self.inside = inside
        self.delay = 0.0
        # Frames held back are written in arrival order: a later one never overtakes (a delay
        # that shrinks applies to frames arriving from then on).
        self._due: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    @staticmethod
    def _forward(source: int, target: int) -> None:
        # Nothing to read after all, the other device not up yet, or its queue full: a lost
        # frame, as on a wire.
        with contextlib.suppress(OSError):
            os.write(target, os.read(source, READ_SIZE))

    def _leaving(self) -> None:
        try:
            frame = os.read(self.inside, READ_SIZE)
        except (BlockingIOError, OSError):
            return
        if self.delay <= 0 and self._due.empty():
            self._write_out(frame)
        else:
            self._due.put_nowait((asyncio.get_running_loop().time() + self.delay, frame))

    def _write_out(self, frame: bytes) -> None:
        with contextlib.suppress(OSError):  # a full queue on the other side: a lost frame
            os.write(self.outside, frame)

    async def _release(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, frame = await self._due.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)  # the link's delay itself
            self._write_out(frame)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.outside, self._forward, self.outside, self.inside)
        loop.add_reader(self.inside, self._leaving)
        release = asyncio.create_task(self._release())
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        print("ready", flush=True)
        try:
            while line := await reader.readline():
                command, _, value = line.decode().strip().partition(" ")
                if command == "delay":
                    self.delay = float(value)
                    print("ok", flush=True)
                else:
                    print(f"error: unknown command {command!r}", flush=True)
        finally:
            release.cancel()


def main(argv: list[str]) -> int:
    outside_name, inside_name = argv
    link = Link(open_tap(outside_name), open_tap(inside_name))
    asyncio.run(link.run())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
