"""A test host of our own: a Linux network namespace joined to this machine by
a veth pair, for tests that need a client with a non-loopback address.

Test traffic may only go to loopback or to hosts the test itself creates, so
instead of looking for some address of this machine we make one: the root
side of the pair is 198.18.0.1/30, the namespace side 198.18.0.2/30 (RFC 2544
benchmark range, never routed anywhere). A client run inside the namespace
reaches a server listening on 0.0.0.0 at 198.18.0.1 and that server sees the
peer 198.18.0.2.

    def test_x(netns):                      # the pytest fixture below
        netns.run(["psql", f"host={netns.host_ip} ..."])   # ip netns exec

Needs root (CI runs as root). Without it the fixture fails, it does not skip.
"""
from __future__ import annotations

import itertools
import os
import shutil
import subprocess

import pytest

HOST_IP = "198.18.0.1"   # root namespace side: where the namespace connects to
NS_IP = "198.18.0.2"     # namespace side: the client's address
PREFIX = 30

_serial = itertools.count()


def _ip() -> str:
    return shutil.which("ip") or "/usr/sbin/ip"


class NetNs:
    """Creates the namespace and veth pair on enter, deletes both on exit."""

    host_ip = HOST_IP
    ns_ip = NS_IP

    def __init__(self):
        # Unique per run (pid) and per use within a run (serial), so a
        # concurrent run or a leftover from a killed one cannot collide.
        # Interface names are limited to 15 characters: pid ≤ 7 digits.
        tag = f"{os.getpid()}x{next(_serial)}"
        self.name = f"pgrouter-test-{tag}"
        self.host_if = f"pgr{tag}h"
        self.ns_if = f"pgr{tag}n"

    def _sh(self, *args: str) -> None:
        out = subprocess.run([_ip(), *args], capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(f"`ip {' '.join(args)}` failed ({out.returncode}): "
                               f"{out.stderr.strip() or out.stdout.strip()}")

    def create(self) -> "NetNs":
        if os.geteuid() != 0:
            raise RuntimeError("creating a network namespace for the test host needs root "
                               "(CI runs the suite as root)")
        try:
            self._sh("netns", "add", self.name)
            # The peer is created directly inside the namespace.
            self._sh("link", "add", self.host_if, "type", "veth",
                     "peer", "name", self.ns_if, "netns", self.name)
            self._sh("addr", "add", f"{HOST_IP}/{PREFIX}", "dev", self.host_if)
            self._sh("link", "set", self.host_if, "up")
            self._sh("-n", self.name, "addr", "add", f"{NS_IP}/{PREFIX}", "dev", self.ns_if)
            self._sh("-n", self.name, "link", "set", self.ns_if, "up")
            self._sh("-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.delete()
            raise
        return self

    def delete(self) -> None:
        """Remove the namespace and the veth pair; safe to call twice. Deleting
        the namespace destroys its end of the pair and with it ours; the
        explicit `link del` covers a pair whose peer never got moved in."""
        for args in (["netns", "del", self.name], ["link", "del", self.host_if]):
            subprocess.run([_ip(), *args], capture_output=True, timeout=30)

    def run(self, cmd: list[str], timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
        """Run `cmd` inside the namespace (`ip netns exec`); text output captured."""
        return subprocess.run([_ip(), "netns", "exec", self.name, *cmd], capture_output=True,
                              text=True, timeout=timeout, **kwargs)

    def __enter__(self) -> "NetNs":
        return self.create()

    def __exit__(self, *exc) -> None:
        self.delete()


@pytest.fixture
def netns(request):
    """A fresh test host (NetNs) for one test; removed in a finalizer even
    when the test or the set-up fails."""
    ns = NetNs()
    request.addfinalizer(ns.delete)
    try:
        ns.create()
    except RuntimeError as exc:
        pytest.fail(f"cannot create the test host network namespace: {exc}", pytrace=False)
    return ns
