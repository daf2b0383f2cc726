"""Is sevd there to take requests?  Its `ready` and `pid` nodes, and whether that pid still lives."""

from __future__ import annotations

import os

from sevd.errors import SevdError
from sevd.xen import protocol as proto
from sevd.xen.xsclient import Xenstore


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def daemon_problem(xs: Xenstore) -> str | None:
    """Why sevd cannot take requests now, or None when it is ready."""
    if xs.read(proto.DAEMON_READY) != "1":
        return f"sevd is not running: {proto.DAEMON_READY} missing (start it: systemctl start sevd, or sevd run)"
    pid = xs.read(proto.DAEMON_PID)
    if pid is None or not pid.isdigit() or not pid_alive(int(pid)):
        return f"sevd is not running: {proto.DAEMON_READY} is set but its pid {pid} is gone (a stale node)"
    return None


def require_daemon(xs: Xenstore) -> None:
    """SevdError (exit 1) unless sevd is ready."""
    problem = daemon_problem(xs)
    if problem:
        raise SevdError(problem)
