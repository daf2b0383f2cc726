"""systemd integration: sd_notify (READY, STATUS, WATCHDOG) and journal fields; silent without systemd.

The notify protocol is one datagram of "KEY=value" lines to the AF_UNIX socket named by $NOTIFY_SOCKET
(sd_notify(3)): a filesystem path, or an abstract name written with a leading "@".  It is sent here
directly, so READY and WATCHDOG work whether or not systemd-python is installed; systemd-python, when
present, only adds structured journal fields.
"""

from __future__ import annotations

import logging
import os
import socket

try:  # systemd-python: journal fields only; the daemon works without it (and without systemd)
    from systemd import journal as sd_journal
except ImportError:  # pragma: no cover - exercised where systemd-python is absent
    sd_journal = None


def _address(value: str) -> str | bytes | None:
    """$NOTIFY_SOCKET as a socket address: a path, or an abstract name ("@name" → b"\\0name")."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock addresses (vsock:CID:PORT) are for VMs; sevd never runs that way


def listening() -> bool:
    """Whether systemd takes notifications (so callers can skip composing a STATUS nobody reads)."""
    return _address(os.environ.get("NOTIFY_SOCKET", "")) is not None


def send(message: str) -> bool:
    """One sd_notify datagram; True when the socket took it."""
    address = _address(os.environ.get("NOTIFY_SOCKET", ""))
    if address is None:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        return sock.send(message.encode()) > 0


def notify(**fields: str) -> bool:
    """notify(READY="1", STATUS="...") → True if systemd (NOTIFY_SOCKET) got it."""
    if not listening():
        return False
    try:
        # A value is one line: a newline inside STATUS would start a new (unintended) assignment.
        return send("\n".join(f"{k}={' '.join(str(v).splitlines())}" for k, v in fields.items()))
    except OSError:
        # Best effort, as sd_notify(3) is: a service manager that went away (or restarts) must not
        # turn a status line into a failed reconcile pass.
        return False


def watchdog_interval() -> float | None:
    """Half of WatchdogSec, when systemd asked this process for pings; None otherwise."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


def setup_logging(level: str) -> logging.Logger:
    logger = logging.getLogger("sevd")
    logger.setLevel(level.upper())
    if logger.handlers:
        return logger
    if sd_journal is not None and os.environ.get("JOURNAL_STREAM"):
        # Structured fields (SEV_DOMID, SEV_HANDLE, SEV_ASID, SEV_STATUS) ride on `extra`.
        logger.addHandler(sd_journal.JournalHandler(SYSLOG_IDENTIFIER="sevd"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("sevd: %(levelname)s %(message)s"))
        logger.addHandler(handler)
    return logger
