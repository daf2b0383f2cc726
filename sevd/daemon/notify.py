"""systemd integration: sd_notify (READY, STATUS, WATCHDOG) and journal fields; silent without systemd."""

from __future__ import annotations

import logging
import os

try:  # systemd-python; the daemon works without it (and without systemd)
    from systemd import daemon as sd_daemon
    from systemd import journal as sd_journal
except ImportError:  # pragma: no cover - exercised where systemd-python is absent
    sd_daemon = None
    sd_journal = None


def listening() -> bool:
    """Whether systemd takes notifications (so callers can skip composing a STATUS nobody reads)."""
    return sd_daemon is not None and bool(os.environ.get("NOTIFY_SOCKET"))


def notify(**fields: str) -> bool:
    """notify(READY="1", STATUS="...") → True if systemd (NOTIFY_SOCKET) got it."""
    if not listening():
        return False
    try:
        return bool(sd_daemon.notify("\n".join(f"{k}={v}" for k, v in fields.items())))
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
