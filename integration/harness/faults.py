"""Faults for test_faults.py: servers killed or frozen with signals, and a
server behind a network we can cut or make lossy.

Signals go to the postmaster and every child of it (backends, WAL sender and
receiver, checkpointer...), the postmaster frozen first so that it cannot
fork a new child in between: SIGKILL is a crash of the whole server (no
FIN is lost: the kernel still closes its sockets), SIGSTOP a server that
stops answering without closing anything.

`NetnsPrimaryCluster` runs a primary inside a network namespace (a test host
of harness/netns.py) listening on its veth address 198.18.0.2 only, so the
router reaches it through the veth pair. `NetFaults` then drops packets there
with nftables inside the namespace (both directions, the host's own firewall
untouched): all of them (a partition: no FIN, no RST, no ICMP) or a random
share (packet loss). The kernel has no netem here (tc's loss qdisc), so
nftables' `numgen random` does the dropping.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from .netns import HOST_IP, NS_IP, NetNs
from .pg import PgCluster, PgServer, pg_tool
from .util import pid_alive, wait_until


# ------------------------------------------------------------------ signals --
def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            kids.append(int(entry.name))
    return kids


def server_pids(server: PgServer) -> list[int]:
    """The postmaster first, then its children."""
    pm = server.postmaster_pid()
    assert pm, f"{server.name} has no postmaster.pid"
    return [pm, *_children(pm)]


def signal_server(server: PgServer, sig: int) -> list[int]:
    """Sends `sig` to the whole server; returns the pids signalled."""
    pm = server.postmaster_pid()
    assert pm, f"{server.name} has no postmaster.pid"
    if sig == signal.SIGCONT:
        pids = [*_children(pm), pm]
    else:
        os.kill(pm, signal.SIGSTOP)   # no new children from here on
        pids = server_pids(server)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return pids


def crash(server: PgServer) -> None:
    """SIGKILL to every process of the server; returns once all are gone
    (a restart refuses to start while an old backend still holds shared memory)."""
    pids = signal_server(server, signal.SIGKILL)

    wait_until(lambda: not any(pid_alive(p) for p in pids), 10, interval=0.02, what=f"{server.name}'s processes to die")


def restart(server: PgServer) -> None:
    """Starts a crashed server again (crash recovery); the log on failure.

    The dead postmaster may linger as a zombie (its parent, PID 1 here, reaps
    it late), and PostgreSQL takes a pid that still answers kill(0) for a
    running server: lock files naming a dead process (postmaster.pid and the
    unix socket's) are removed first, as an operator would after a crash."""
    pid = server.postmaster_pid()
    if pid and not pid_alive(pid):
        (server.datadir / "postmaster.pid").unlink(missing_ok=True)
        (server.sockdir / f".s.PGSQL.{server.port}.lock").unlink(missing_ok=True)
    try:
        server.start()
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\n--- {server.name} log ---\n{server.log()[-4000:]}") from None


# ------------------------------------------------------- a server in a netns --
class NetnsPgServer(PgServer):
    """A PgServer whose postmaster runs inside network namespace `netns`."""

    netns: str = ""

    def start(self, timeout: int = 60) -> None:
        cmd = [shutil.which("ip") or "/usr/sbin/ip", "netns", "exec", self.netns,
               "runuser", "-u", "postgres", "--", "setsid", "-w", pg_tool("pg_ctl"),
               "-D", str(self.datadir), "-l", str(self.logfile), "-w", "-t", str(timeout), "start"]
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        proc = subprocess.run(cmd, cwd=self.datadir.parent, env=env, capture_output=True,
                              text=True, timeout=timeout + 30, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RuntimeError(f"starting {self.name} in {self.netns} failed:\n{proc.stderr}\n"
                               f"{self.log()}")


class NetnsPrimaryCluster(PgCluster):
    """A primary alone, inside `ns`, reached at 198.18.0.2 (superuser access
    for the test still goes through its unix socket, which no namespace cuts)."""

    def __init__(self, ns: NetNs, **kwargs):
        extra = {"listen_addresses": NS_IP, **kwargs.pop("extra_conf", {})}
        super().__init__(with_replica=False, extra_conf=extra, prefix="pgrouter-netns-", **kwargs)
        p = self.primary
        self.primary = NetnsPgServer(p.name, p.datadir, p.port, p.sockdir, p.logfile, host=NS_IP)
        self.primary.netns = ns.name

    def _hba(self) -> str:
        return super()._hba() + f"host    all          all      {HOST_IP}/32   scram-sha-256\n"


class NetFaults:
    """Packet drops on the namespace's veth, by an nftables table of ours
    inside the namespace (gone with the namespace at the latest)."""

    TABLE = "pgrouter_faults"

    def __init__(self, ns: NetNs):
        self.ns = ns

    def _nft(self, *args: str) -> None:
        out = self.ns.run(["nft", *args])
        if out.returncode != 0:
            raise RuntimeError(f"nft {' '.join(args)} failed: {out.stderr.strip()}")

    def _drop(self, *match: str) -> None:
        self.heal()
        self._nft("add", "table", "inet", self.TABLE)
        for chain, hook, dev in (("in", "input", "iifname"), ("out", "output", "oifname")):
            self._nft("add", "chain", "inet", self.TABLE, chain,
                      f"{{ type filter hook {hook} priority 0; policy accept; }}")
            self._nft("add", "rule", "inet", self.TABLE, chain, dev, self.ns.ns_if, *match, "drop")

    def partition(self) -> None:
        """Every packet between the server and the outside world is dropped."""
        self._drop()

    def loss(self, percent: int) -> None:
        """Each packet, either way, is dropped with probability percent/100."""
        self._drop("numgen", "random", "mod", "100", "<", str(percent))

    def heal(self) -> None:
        self.ns.run(["nft", "delete", "table", "inet", self.TABLE])


