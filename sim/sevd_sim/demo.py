"""`make demo`: a full attested SEV launch on a simulated host, with the real processes a host runs.

The demo starts what a Xen host would have running, as separate processes: the xenstored stand-in
and the sevd daemon (`sevd run`), each logging into the host directory.  Then it runs the commands
a user types, as subprocesses: `xl-sev create examples/sev-guest.cfg --attest HOST/owner` (xl-sev
acts as a local guest owner: it verifies the platform's certificate chain, makes the launch
session, checks the measurement of Debian's OVMF and injects a secret), `xl-sev list`, the owner's
independent check with `sev-owner verify-measurement`, and `xl-sev destroy`.  Whatever happens, it
stops every process it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sevd.durable import LockHeld, hold_lock
from sevd.xen import protocol as proto
from sevd_sim import kds
from sevd_sim.host import SimulatedHost

OVMF = Path("/usr/share/ovmf/OVMF.fd")
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sev-guest.cfg"
READY_TIMEOUT = 20.0

# Used when sevd is installed without its source tree (no examples/ next to the package).
FALLBACK_CFG = """\
name = "sev-guest"
type = "hvm"
memory = 64
vcpus = 1
bios = "ovmf"
bios_path_override = "/usr/share/ovmf/OVMF.fd"
sev = 1
sev_policy = 0x1
"""


class DemoFailed(Exception):
    pass


def _tool(name: str) -> list[str]:
    """The installed entry point next to this Python (the venv's bin), else the module behind it."""
    path = Path(sys.executable).parent / name
    if path.exists():
        return [str(path)]
    found = shutil.which(name)
    if found:
        return [found]
    module = {"sevd": "sevd.cli.sevd_main", "xl-sev": "sevd.cli.xl_sev", "sev-owner": "sevd.cli.owner"}[name]
    return [sys.executable, "-m", module]


EXIT_DEMO_RUNNING = 3


def run_demo(host_dir: str | None = None) -> int:
    """Run the demo on `host_dir` (kept), or on a temporary host removed afterwards."""
    if host_dir is None:
        with tempfile.TemporaryDirectory(prefix="sevd-demo-") as tmp:
            return Demo(Path(tmp)).run()
    return Demo(Path(host_dir)).run()


class Demo:
    def __init__(self, root: Path):
        self.root = root.resolve()
        self.config = self.root / "sevd.toml"
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.started = time.monotonic()

    # -- output --------------------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        print(text, flush=True)

    def command(self, *args: str, check: bool = True) -> str:
        """Run one user command, echo it and its output as a terminal would, return its stdout."""
        shown = " ".join(a.replace(str(self.root), "$HOST") for a in args)
        self.say(f"$ {shown}")
        proc = subprocess.Popen(
            [*_tool(args[0]), *args[1:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            print(f"    {line.rstrip().replace(str(self.root), '$HOST')}", flush=True)
        rc = proc.wait()
        if check and rc != 0:
            raise DemoFailed(f"`{shown}` exited {rc}")
        return "".join(lines)

    # -- the processes a host runs -------------------------------------------------------------------------

    def start(self, name: str, argv: list[str], log: Path) -> subprocess.Popen:
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def wait_until(self, what: str, predicate, proc: subprocess.Popen, log: Path) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise DemoFailed(f"{what}: the process exited {proc.returncode}; see {log}:\n{_tail(log)}")
            with contextlib.suppress(Exception):
                if predicate():
                    return
            time.sleep(0.05)
        raise DemoFailed(f"{what}: not ready after {READY_TIMEOUT:g} s; see {log}")

    def stop_all(self) -> None:
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self.say(f"stopped {name} (pid {proc.pid}, exit {proc.returncode})")
        self.procs.clear()

    # -- the demo ------------------------------------------------------------------------------------------

    def run(self) -> int:
        if not OVMF.exists():
            print(f"{OVMF} is missing: install Debian's ovmf package (make demo does)")
            return 2
        # One demo per simulated host: a second would recreate the host and its xenstored under the first.
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            lock = hold_lock(self.root / "demo.lock")
        except LockHeld as held:
            who = f" (pid {held.pid})" if held.pid else ""
            print(f"another sevd-sim demo{who} runs on {self.root}", file=sys.stderr)
            return EXIT_DEMO_RUNNING
        try:
            return self._run_locked()
        finally:
            os.close(lock)

    def _run_locked(self) -> int:
        try:
            self._run()
        except DemoFailed as exc:
            self.say(f"demo FAILED: {exc}")
            return 1
        except KeyboardInterrupt:
            self.say("interrupted")
            return 130
        finally:
            self.stop_all()
        self.say(f"done in {time.monotonic() - self.started:.1f} s")
        return 0

    def _run(self) -> None:
        from sevd.xen.xsclient import Xenstore

        host = SimulatedHost.create(self.root)
        self.say(f"simulated host: {self.root} (simulated PSP, simulated Xen; $HOST below)")
        self.say("key server: $HOST/kds, AMD's KDS paths as files (file:// in $HOST/sevd.toml; offline)")
        (self.root / "pids").mkdir(exist_ok=True)

        sock, store = self.root / "xenstored.sock", self.root / "xenstored.json"
        xs_log, sevd_log = self.root / "xenstored.log", self.root / "sevd.log"
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        xenstored = self.start(
            "xenstored stand-in",
            [sys.executable, "-m", "sevd_sim.xenstored", "--socket", str(sock), "--store", str(store), "--init-dom0"],
            xs_log,
        )
        self.wait_until("xenstored stand-in", lambda: _answers(sock), xenstored, xs_log)
        self.say(f"started xenstored stand-in (pid {xenstored.pid}, log $HOST/{xs_log.name})")

        daemon = self.start("sevd", [*_tool("sevd"), "run", "--config", str(self.config)], sevd_log)
        xs = Xenstore(str(sock))
        try:
            self.wait_until(
                "sevd",
                lambda: xs.read(proto.DAEMON_READY) == "1" and xs.read(proto.DAEMON_PID) == str(daemon.pid),
                daemon,
                sevd_log,
            )
            self.say(f"started sevd (pid {daemon.pid}, log $HOST/{sevd_log.name})")
            for name, proc in self.procs:
                (self.root / "pids" / name.split()[0]).write_text(str(proc.pid))
            self._launch(host, xs)
        finally:
            xs.close()

    def _launch(self, host: SimulatedHost, xs) -> None:
        cfg = EXAMPLE
        if not cfg.exists():
            cfg = self.root / "sev-guest.cfg"
            cfg.write_text(FALLBACK_CFG)
        owner = self.root / "owner"
        xl = ("xl-sev", "--config", str(self.config))

        self.say("\nthe full chain: pdh, pek, oca from the firmware; the signed cek, ask, ark from the key server")
        certs = self.root / "certs"
        self.command(*xl, "platform", "export", str(certs))
        self.say("\nthe owner trusts AMD's bundled roots only: this simulated chip's chain is refused")
        if "--roots" not in self.command("sev-owner", "verify-chain", str(certs), check=False):
            raise DemoFailed("sev-owner verify-chain accepted a chain not signed by AMD")
        self.say("\n... unless the simulated AMD root is named explicitly")
        self.command("sev-owner", "verify-chain", str(certs), "--roots", str(kds.roots_dir(self.root)))

        self.say("\nhost + local guest owner: create, measure, verify, inject the secret, finish, unpause")
        self.command(*xl, "create", str(cfg), "--attest", str(owner))

        self.say("")
        self.command(*xl, "list")
        guests = json.loads(_quiet([*_tool("xl-sev"), *xl[1:], "--json", "list"]))
        guest = next(g for g in guests if g["name"] == "sev-guest")
        domid = guest["domid"]
        measured = json.loads(_quiet([*_tool("xl-sev"), *xl[1:], "--json", "launch-measure", "sev-guest"]))

        self.say("\nthe owner's own check, with the owner's tool and files (sev-tool names):")
        self.command(
            "sev-owner",
            "verify-measurement",
            "--image",
            str(OVMF),
            "--policy",
            measured["policy"],
            "--api",
            f"{measured['api_major']}.{measured['api_minor']}",
            "--build",
            str(measured["build"]),
            "--tk",
            str(owner / "tmp_tk.bin"),
            "--measurement",
            measured["measurement"],
        )

        self.say("\nwhat the host sees of the guest's memory:")
        from sevd.toolstack.guestnodes import read_request

        request = read_request(xs, domid)
        if request is None:
            raise DemoFailed(f"domain {domid}: its launch request is gone from xenstore")
        gpa = request.image_gpa
        xen = host.xen()
        memory = host.psp().memory
        secret = (owner / "secret.bin").read_bytes()
        spa = xen.guest_ranges(domid, gpa, len(secret))[0][0]
        image = OVMF.read_bytes()
        first, length = xen.boot_image_ranges(domid)[0]
        leaked = memory.read(spa, len(secret)) == secret
        self.say(f"    the secret ({len(secret)} bytes at GPA {gpa:#x}) in plaintext: {leaked}")
        self.say(f"    OVMF's first {length // 1024} KiB in plaintext: {memory.read(first, length) == image[:length]}")

        self.say("")
        self.command(*xl, "destroy", "sev-guest")
        self.command(*xl, "platform", "status")


def _answers(sock: Path) -> bool:
    """Whether a xenstored listens on `sock` (connecting raises until it does)."""
    from sevd.xen.xsclient import Xenstore

    Xenstore(str(sock)).close()
    return True


def _quiet(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise DemoFailed(f"`{' '.join(argv)}` exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def _tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(run_demo(os.environ.get("SEVD_DEMO_HOST")))
