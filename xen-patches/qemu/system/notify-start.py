"""Start a Type=notify service the way systemd does, for a Dom0 without systemd.

usage: notify-start.py TIMEOUT LOG -- COMMAND...
Binds a NOTIFY_SOCKET, starts COMMAND with it (output to LOG, in its own session so it outlives
this script), and waits for READY=1.  Prints "SEVD-CHECK ok|FAIL: ..." with the seconds it took
and the last STATUS; exits 1 if the service exits or stays silent past TIMEOUT.  After READY a
child keeps receiving on the socket for the service's lifetime, as systemd does, and appends the
STATUS lines to LOG.status.
"""

import os
import socket
import subprocess
import sys
import time


def keep_listening(sock: socket.socket, path: str) -> None:
    os.setsid()
    sock.settimeout(None)
    while True:
        message = sock.recv(4096).decode(errors="replace")
        with open(path, "a") as out:
            out.writelines(f"{line}\n" for line in message.splitlines() if line.startswith("STATUS="))


def main() -> int:
    timeout, log, sep, *command = sys.argv[1:]
    assert sep == "--" and command, __doc__
    path = "/run/sevd-notify.socket"
    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    start = time.monotonic()
    env = dict(os.environ, NOTIFY_SOCKET=path)
    with open(log, "ab") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    status = ""
    deadline = start + float(timeout)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            print(f"SEVD-CHECK FAIL: {command[0]} exited with {proc.returncode} before READY=1", flush=True)
            return 1
        sock.settimeout(1.0)
        try:
            message = sock.recv(4096).decode(errors="replace")
        except socket.timeout:
            continue
        fields = dict(line.split("=", 1) for line in message.splitlines() if "=" in line)
        status = fields.get("STATUS", status)
        if fields.get("READY") == "1":
            took = time.monotonic() - start
            print(f"SEVD-CHECK ok: {command[0]} READY=1 after {took:.1f}s, pid {proc.pid}, STATUS={status!r}", flush=True)
            if os.fork() == 0:
                keep_listening(sock, log + ".status")
            return 0
    print(f"SEVD-CHECK FAIL: no READY=1 from {command[0]} within {timeout}s (STATUS={status!r})", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
