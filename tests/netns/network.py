"""Hosts on one machine: Linux network namespaces on a bridge, and the faults a network has.

    with Network.create() as net:                  # a bridge with an address here (.1)
        db = net.add_host("db")                    # a namespace, a veth on the bridge, .2
        slow = net.add_host("auth-2", emulated=True)   # its link through tests/netns/link.py
        net.delay(slow, 0.2)                       # 200 ms added to what it sends
        net.loss(slow, 0.3)                        # 30 % of its packets dropped, both ways
        net.partition(slow)                        # nothing in or out
        net.heal(slow)                             # all of the above undone

Every host is a namespace of its own with one interface (eth0) on the bridge and its own address
in a /24; this machine (the tests, the launcher) reaches them all through the bridge's address.
Loss and partitions are nftables rules inside the host's namespace (`numgen random` drops a share
of packets; a drop policy drops all), so they hit every connection of the host and nothing else.
Delay is the one fault this machine's kernel cannot make (it has no netem qdisc): hosts created
with `emulated=True` get their link through a user-space relay that holds frames back
(tests/netns/link.py); every other host gets a plain veth pair.

Names carry this process's pid (`cmn<pid>…`): namespaces, bridges and links of a test process that
died are removed by the next Network.create(). close() removes everything this one made.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

from launcher.bootstrap import REPO, Apt
from launcher.stack import Host

PREFIX = "cmn"
# The /24s the test networks take their addresses from (10.231.0.0/16), one picked per network.
POOL = ipaddress.IPv4Network("10.231.0.0/16")

NFT_TABLE = "capsule_fault"


class NamespacesUnavailable(RuntimeError):
    """This machine (or this user) cannot make network namespaces: the tests that need them skip."""


def run(*argv: str, input: str | None = None) -> str:
    done = subprocess.run(argv, input=input, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def netns(namespace: str, *argv: str, input: str | None = None) -> str:
    return run("ip", "netns", "exec", namespace, *argv, input=input)


def unavailable_reason() -> str | None:
    """Why namespaces, veth pairs, bridges, TAP devices or nftables cannot be used here; None
    when they all work (checked by making one of each). Installs iproute2 and nftables when missing
    and the machine allows (root)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [pkg for tool, pkg in (("ip", "iproute2"), ("nft", "nftables")) if shutil.which(tool) is None]
    if missing:
        try:
            Apt.install(*missing)
        except Exception as exc:  # no apt, no network: the reason is what the tests print
            return f"cannot install {' '.join(missing)}: {exc}"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun: TAP devices (the emulated link of a slow host) cannot be made"
    probe = f"{PREFIX}probe{os.getpid()}"
    try:
        run("ip", "netns", "add", probe)
        netns(probe, "ip", "link", "add", "p0", "type", "veth", "peer", "name", "p1")
        netns(probe, "ip", "link", "add", "b0", "type", "bridge")
        netns(probe, "ip", "tuntap", "add", "dev", "t0", "mode", "tap")
        netns(probe, "nft", "add", "table", "inet", NFT_TABLE)
    except (RuntimeError, OSError) as exc:
        return str(exc)
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def remove_stale() -> None:
    """Namespaces and links of test processes that are gone (a crash, a kill -9 of pytest)."""
    owner = re.compile(rf"^{PREFIX}(\d+)")
    for line in run("ip", "netns", "list").splitlines():
        name = line.split()[0] if line.split() else ""
        match = owner.match(name)
        if match and not _alive(int(match.group(1))):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    for line in run("ip", "-o", "link", "show").splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        match = owner.match(name)
        if match and not _alive(int(match.group(1))):
            subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free_subnet() -> ipaddress.IPv4Network:
    used = [
        ipaddress.IPv4Network(word, strict=False)
        for word in run("ip", "-4", "route", "show").split()
        if re.fullmatch(r"\d+\.\d+\.\d+\.\d+/\d+", word)
    ]
    candidates: list[ipaddress.IPv4Network] = list(POOL.subnets(new_prefix=24))
    random.shuffle(candidates)
    for subnet in candidates:
        if not any(subnet.overlaps(other) for other in used):
            return subnet
    raise RuntimeError(f"no free /24 left in {POOL}")


@dataclass
class EmulatedLink:
    """tests/netns/link.py serving one host's link."""

    process: subprocess.Popen[str]

    def command(self, line: str) -> None:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(line + "\n")
        stdin.flush()
        answer = stdout.readline().strip()
        if answer != "ok":
            raise RuntimeError(f"link: {line!r} → {answer!r}")

    def close(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Network:
    token: str
    subnet: ipaddress.IPv4Network
    bridge: str
    hosts: dict[str, Host] = field(default_factory=dict)
    links: dict[str, EmulatedLink] = field(default_factory=dict)
    _addresses: Iterator[ipaddress.IPv4Address] = field(init=False)

    def __post_init__(self) -> None:
        self._addresses = self.subnet.hosts()
        self.gateway_address = str(next(self._addresses))

    @classmethod
    @contextlib.contextmanager
    def create(cls) -> Iterator[Network]:
        reason = unavailable_reason()
        if reason is not None:
            raise NamespacesUnavailable(reason)
        remove_stale()
        token = f"{PREFIX}{os.getpid()}"
        network = cls(token=token, subnet=_free_subnet(), bridge=f"{token}b")
        try:
            run("ip", "link", "add", network.bridge, "type", "bridge")
            run("ip", "addr", "add", f"{network.gateway_address}/{network.subnet.prefixlen}", "dev", network.bridge)
            run("ip", "link", "set", network.bridge, "up")
            yield network
        finally:
            network.close()

    # --- hosts -----------------------------------------------------------------------------------

    def add_host(self, name: str, *, emulated: bool = False) -> Host:
        """A namespace `<token>-<name>` with eth0 on the bridge and the next address."""
        index = len(self.hosts)
        host = Host(f"{self.token}-{name}", str(next(self._addresses)))
        run("ip", "netns", "add", host.namespace)
        self.hosts[name] = host
        netns(host.namespace, "ip", "link", "set", "lo", "up")
        outside, inside = f"{self.token}o{index}", f"{self.token}i{index}"
        if emulated:
            process = subprocess.Popen(
                [sys.executable, "-m", "tests.netns.link", outside, inside],
                cwd=REPO,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            link = EmulatedLink(process)
            self.links[name] = link
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the emulated link of {name} did not start")
        else:
            run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        run("ip", "link", "set", inside, "netns", host.namespace)
        netns(host.namespace, "ip", "link", "set", inside, "name", "eth0")
        netns(host.namespace, "ip", "addr", "add", f"{host.address}/{self.subnet.prefixlen}", "dev", "eth0")
        netns(host.namespace, "ip", "link", "set", "eth0", "up")
        run("ip", "link", "set", outside, "master", self.bridge)
        run("ip", "link", "set", outside, "up")
        return host

    def close(self) -> None:
        for link in self.links.values():
            link.close()
        for host in self.hosts.values():
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)
        self.links.clear()
        self.hosts.clear()

    # --- faults ----------------------------------------------------------------------------------

    def delay(self, host: Host, seconds: float) -> None:
        """`seconds` added to every frame the host sends (its link must be emulated)."""
        self._link(host).command(f"delay {seconds:g}")

    def loss(self, host: Host, share: float) -> None:
        """Drop `share` of the host's packets, in and out, at random (each packet on its own)."""
        percent = round(share * 100)
        self._rules(host, f"numgen random mod 100 < {percent} drop", policy="accept")

    def partition(self, host: Host) -> None:
        """Nothing in or out of the host (loopback aside): its peers see silence, not resets."""
        self._rules(host, "", policy="drop")

    def heal(self, host: Host) -> None:
        """Every fault of the host undone."""
        subprocess.run(
            ["ip", "netns", "exec", host.namespace, "nft", "delete", "table", "inet", NFT_TABLE],
            capture_output=True,
            check=False,
        )
        name = next((n for n, h in self.hosts.items() if h == host), None)
        if name in self.links:
            self.links[name].command("delay 0")

    def _link(self, host: Host) -> EmulatedLink:
        name = next((n for n, h in self.hosts.items() if h == host), None)
        if name not in self.links:
            raise ValueError(f"{host.namespace} was not created with emulated=True")
        return self.links[name]

    def _rules(self, host: Host, rule: str, *, policy: str) -> None:
        # One table replaced as a whole (nft -f is atomic): a fault never half applies.
        body = "\n".join(
            f"""  chain {hook} {{
    type filter hook {hook} priority 0; policy {policy};
    {device} "lo" accept
    {rule}
  }}"""
            for hook, device in (("input", "iif"), ("output", "oif"))
        )
        script = f"table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\ntable inet {NFT_TABLE} {{\n{body}\n}}\n"
        netns(host.namespace, "nft", "-f", "-", input=script)
