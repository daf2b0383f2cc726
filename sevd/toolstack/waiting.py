"""Following a guest's nodes until sevd has done something: a `Waiter` per xenstore connection.

The waiter owns the watches it sets (one per guest subtree, set once per connection) and what it last
reported of each guest, so a launch's progress shows each state or step once across several waits.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from sevd.abi.units import DomId
from sevd.errors import SevdError
from sevd.toolstack.guestnodes import read_guest
from sevd.toolstack.liveness import daemon_problem
from sevd.xen import protocol as proto
from sevd.xen.xsclient import Xenstore

Nodes = dict[str, str]  # read_guest's view: the guest's node names overlaid with its summary's keys
POLL = 0.25  # seconds between reads when no watch event comes


class LaunchError(SevdError):
    """sevd reported a failure for a guest (its `error` node: "NAME: message"), or did not answer in time."""


class Reporter(Protocol):
    """Where a launch tells what happens: whole lines, and steps that may overwrite each other."""

    def line(self, text: str) -> None: ...

    def step(self, text: str) -> None: ...

    def close(self) -> None:
        """End an open step line."""
        ...


class Waiter:
    """Waits on one xenstore connection; the caller owns both and closes the connection."""

    def __init__(self, xs: Xenstore) -> None:
        self.xs = xs
        self._watched: set[str] = set()
        self._shown: dict[int, tuple[str | None, str | None]] = {}  # (state, step) last reported, per domid

    def _watch(self, domid: DomId) -> None:
        base = proto.guest_path(domid)
        if base not in self._watched:
            self.xs.watch([base])
            self._watched.add(base)

    def _report(self, domid: DomId, nodes: Nodes, reporter: Reporter) -> None:
        shown = (nodes.get("state"), nodes.get("step"))
        before = self._shown.get(domid, (None, None))
        if shown == before or not shown[0]:
            return
        step = f": {shown[1]}" if shown[1] and shown[0] == "launching" else ""
        if (shown[0], step) != (before[0], before[1] and step):
            reporter.step(f"{shown[0]}{step}")
        self._shown[domid] = shown

    def wait(
        self,
        domid: DomId,
        done: Callable[[Nodes], bool],
        timeout: float,
        what: str,
        reporter: Reporter | None = None,
        *,
        fail_on_error_state: bool = True,
    ) -> Nodes:
        """Follow /sevd/guest/<domid> (watch + a short poll) until `done(nodes)`; report state/step changes.

        LaunchError when the guest reaches state `error` (unless told not to) or `timeout` seconds pass.
        """
        self._watch(domid)
        deadline = time.monotonic() + timeout
        while True:
            nodes = read_guest(self.xs, domid)
            if reporter is not None:
                self._report(domid, nodes, reporter)
            if done(nodes):
                return nodes  # one summary: the state waited for comes with everything published with it
            if fail_on_error_state and nodes.get("state") == proto.GuestState.ERROR.value:
                if reporter is not None:
                    reporter.close()
                raise LaunchError(f"domain {domid}: {nodes.get('error') or 'failed (no reason given)'}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if reporter is not None:
                    reporter.close()
                state = nodes.get("state", "absent")
                problem = daemon_problem(self.xs)
                hint = f"; {problem}" if problem else ""
                raise LaunchError(
                    f"domain {domid}: timed out after {timeout:g} s waiting for {what} (state {state}){hint}"
                )
            self.xs.next_event(min(remaining, POLL))

    def state(self, domid: DomId, state: proto.GuestState, timeout: float, reporter: Reporter | None = None) -> Nodes:
        """Until the guest is in `state`."""
        return self.wait(domid, lambda n: n.get("state") == state.value, timeout, f"state {state.value}", reporter)

    def command(self, domid: DomId, timeout: float, what: str) -> Nodes:
        """Until sevd has taken the command node (it removes it when done); LaunchError if the summary has an `error`.

        sevd removes the command and publishes its outcome in one transaction, so the summary read after the
        command is gone says how it went.
        """
        nodes = self.wait(domid, lambda n: "command" not in n, timeout, what, fail_on_error_state=False)
        if "error" in nodes:
            raise LaunchError(f"domain {domid}: {nodes['error']}")
        return nodes

    def gone(self, domid: DomId, timeout: float, what: str) -> None:
        """Until the guest's nodes are gone (sevd decommissioned it)."""
        self.wait(domid, lambda n: not n, timeout, what, fail_on_error_state=False)
