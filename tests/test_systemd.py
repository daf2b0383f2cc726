"""The systemd unit (verify, security exposure) and the daemon's sd_notify protocol, with a real process."""

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_harness import Harness, wait_for

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "sevd.service"
SEVD = Path(sys.executable).parent / "sevd"

needs_systemd = pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze (package systemd)")


@pytest.fixture
def unit_copy(tmp_path):
    # The unit names /usr/bin/sevd; point it at this install so verify can check the command exists.
    text = UNIT.read_text().replace("/usr/bin/sevd", str(SEVD))
    path = tmp_path / "sevd.service"
    path.write_text(text)
    return path


@needs_systemd
def test_unit_verifies_without_warnings(unit_copy):
    proc = subprocess.run(["systemd-analyze", "verify", str(unit_copy)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


@needs_systemd
def test_unit_security_exposure_at_most_2(unit_copy):
    proc = subprocess.run(
        ["systemd-analyze", "--offline=true", "security", str(unit_copy)], capture_output=True, text=True
    )
    match = re.search(r"Overall exposure level for sevd\.service: ([0-9.]+)", proc.stdout + proc.stderr)
    assert match, proc.stdout + proc.stderr
    exposure = float(match.group(1))
    print(f"systemd-analyze security exposure: {exposure}")
    assert exposure <= 2.0


def test_unit_is_type_notify_with_watchdog():
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "StateDirectory=sevd",
        "DeviceAllow=/dev/sev rw",
        "ProtectSystem=strict",
    ):
        assert line in text


# sys.modules[name] = None makes `import systemd` fail: the daemon as installed without systemd-python.
WITHOUT_SYSTEMD_PYTHON = "import sys\nsys.modules['systemd'] = None\nsys.modules['systemd.journal'] = None"


class StandInManager:
    """What systemd does with $NOTIFY_SOCKET: a datagram socket that collects the lines sent to it."""

    def __init__(self, address: str | bytes):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def received(self, needle: str) -> bool:
        with contextlib.suppress(TimeoutError):
            self.messages.append(self.sock.recv(4096).decode())
        return any(needle in m for m in self.messages)


@pytest.mark.parametrize("systemd_python", [True, False], ids=["with-systemd-python", "without-systemd-python"])
def test_daemon_sends_ready_and_watchdog(tmp_path, systemd_python):
    if systemd_python:
        pytest.importorskip("systemd.journal", reason="systemd-python is installed by make test")
    sock_path = tmp_path / "notify.sock"
    manager = StandInManager(str(sock_path))
    h = Harness(tmp_path / "host")
    try:
        prelude = None if systemd_python else WITHOUT_SYSTEMD_PYTHON
        h.start_daemon({"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"}, prelude=prelude)
        wait_for(lambda: manager.received("READY=1"), 20, "READY=1")
        wait_for(lambda: manager.received("WATCHDOG=1"), 20, "WATCHDOG=1")
        assert any("STATUS=" in m for m in manager.messages)
    finally:
        h.close()
        manager.sock.close()


def test_notify_reaches_an_abstract_socket(monkeypatch):
    from sevd.daemon import notify

    name = f"sevd-test-{os.getpid()}"
    manager = StandInManager(b"\0" + name.encode())
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify.notify(READY="1", STATUS="two\nlines") is True
        assert manager.received("READY=1")
        assert manager.messages == ["READY=1\nSTATUS=two lines"]
    finally:
        manager.sock.close()


def test_no_notify_socket_sends_nothing(monkeypatch):
    from sevd.daemon import notify

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not notify.listening() and notify.notify(READY="1") is False


def test_a_status_line_to_a_manager_that_went_away_is_not_an_error(tmp_path, monkeypatch):
    from sevd.daemon import notify

    path = tmp_path / "notify.socket"
    gone = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    gone.bind(str(path))
    gone.close()  # the socket file stays, nobody listens: sending is refused
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    assert notify.listening() and notify.notify(STATUS="1 guest running") is False


@needs_systemd
def test_autostart_unit_verifies_without_warnings(tmp_path):
    unit = UNIT.with_name("sevd-autostart.service")
    text = unit.read_text().replace("/usr/bin/xl-sev", str(SEVD.with_name("xl-sev")))
    (tmp_path / "sevd-autostart.service").write_text(text)
    (tmp_path / "sevd.service").write_text(UNIT.read_text().replace("/usr/bin/sevd", str(SEVD)))
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "sevd-autostart.service")], capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr
    assert "autostart --dir /etc/sevd/auto" in text and "Requires=sevd.service" in text
