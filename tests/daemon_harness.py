"""Real processes for end-to-end tests: the xenstored stand-in, `sevd run`, and a simulated toolstack."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sevd.abi.policy import Policy
from sevd.toolstack.guestnodes import parse_summary, read_summary, request_launch
from sevd.xen import protocol as proto
from sevd.xen.xsclient import Xenstore
from sevd_sim.host import SimulatedHost
from sevd_sim.toolstack import SimulatedToolstack
from sevd_sim.xenstored import XenstoredStandIn

BIN = Path(sys.executable).parent
OVMF = Path("/usr/share/ovmf/OVMF.fd")


def wait_for(predicate, timeout=30.0, what="condition", poll=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


class Harness:
    def __init__(self, root: Path, persist: bool = True, **host_options):
        self.root = root
        self.host = SimulatedHost.create(root, **host_options)
        store = str(root / "xenstored.json") if persist else None
        self.xenstored = XenstoredStandIn(str(root / "xenstored.sock"), store).start()
        self.xs = Xenstore(str(root / "xenstored.sock"))
        self.toolstack = SimulatedToolstack(root, self.xs)
        self.daemon: subprocess.Popen | None = None
        self.log = root / "sevd.log"

    def start_daemon(
        self, env_extra: dict[str, str] | None = None, prelude: str | None = None, wait: bool = True
    ) -> subprocess.Popen:
        """`sevd run`; with `prelude`, Python run first in the daemon's process (to patch something out);
        `wait`: until its ready node names it."""
        env = dict(os.environ, **(env_extra or {}))
        config = str(self.root / "sevd.toml")
        argv = [str(BIN / "sevd"), "run", "--config", config]
        if prelude is not None:
            run = f"from sevd.daemon.service import run\nraise SystemExit(run({config!r}))"
            argv = [sys.executable, "-c", f"{prelude}\n{run}"]
        with open(self.log, "ab") as log:
            self.daemon = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        if wait:
            wait_for(lambda: self.xs.read(proto.DAEMON_READY) == "1" and self._pid_matches(), 30, "sevd ready")
        return self.daemon

    def _pid_matches(self) -> bool:
        return self.daemon is not None and self.xs.read(proto.DAEMON_PID) == str(self.daemon.pid)

    def stop_daemon(self, sig=signal.SIGTERM) -> int:
        assert self.daemon is not None
        self.daemon.send_signal(sig)
        rc = self.daemon.wait(timeout=30)
        self.daemon = None
        return rc

    def request(self, domid: int, policy: Policy | None = None, attest: bool = False, session=None) -> None:
        """Request the launch of `domid`'s boot image, as xl-sev does (an owner `session` optional)."""
        policy = policy or Policy(0)
        dom = self.toolstack.xen.domains()[domid]
        godh, blob = (session.godh.to_bytes(), session.blob.to_bytes()) if session else (None, None)
        request = proto.LaunchRequest(
            domid, 1, policy, policy.is_es(), attest, dom["image_gpa"], dom["image_size"], godh, blob, dom["name"]
        )
        request_launch(self.xs, request)

    def summary(self, domid: int) -> proto.GuestSummary | None:
        return read_summary(self.xs, domid)

    def field(self, domid: int, key: str) -> str | None:
        """One value of the guest's summary node as text (`state`, `step`, `asid`, `error`...), None if absent."""
        summary = self.summary(domid)
        return None if summary is None else summary.to_fields().get(key)

    def state(self, domid: int) -> str | None:
        return self.field(domid, "state")

    def states(self, domids: list[int]) -> list[str | None]:
        """Many guests' states, their summaries read in one pipelined batch."""
        texts = self.xs.read_many([proto.guest_path(d, "summary") for d in domids])
        summaries = [parse_summary(d, text) for d, text in zip(domids, texts, strict=True)]
        return [s.state.value if s is not None and s.state is not None else None for s in summaries]

    def wait_state(self, domid: int, *states: str, timeout: float = 60, poll: float = 0.02) -> str:
        try:
            return wait_for(
                lambda: (s := self.state(domid)) in states and s, timeout, f"domain {domid} in {states}", poll
            )
        except AssertionError as exc:
            if self.daemon is not None and self.daemon.poll() is None:
                self.daemon.send_signal(signal.SIGUSR1)  # sevd dumps its threads' stacks to its log
                time.sleep(0.5)
            raise AssertionError(f"{exc}; state {self.state(domid)!r}; sevd log:\n{self.logs()[-8000:]}") from None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.daemon is not None:
                self.stop_daemon()
        self.xs.close()
        self.xenstored.stop()

    def logs(self) -> str:
        return self.log.read_text() if self.log.exists() else ""
