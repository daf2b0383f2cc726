"""`xl-sev ok`: is this host ready for SEV guests?  One `Check` per line, in the order shown.

CPU SEV and SEV-ES come from the hypervisor when there is one to ask (on Xen, Dom0's own CPUID does not
show leaf 0x8000001F: Xen's domctl INFO says what it runs), else from this CPU.  What the PSP and the
hypervisor are (`/dev/sev`, `Xen`), each backend says of itself (sevd.backends); the rest is the same
on every host: the guest-command ioctl, the firmware, xenstore, sevd.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import os
from collections.abc import Callable
from pathlib import Path

from sevd.abi.cpuid import MemoryEncryption
from sevd.abi.status import FirmwareError
from sevd.abi.units import NO_HANDLE, DomId
from sevd.backends import hypervisor_backend, hypervisor_presence, open_psp, psp_presence
from sevd.config import Config
from sevd.errors import DeviceError, SevdError
from sevd.guest import GuestCommands
from sevd.platform import Platform
from sevd.psp.device import PspClient
from sevd.snp_firmware import SnpCommands
from sevd.toolstack.domains import connect
from sevd.toolstack.liveness import daemon_problem
from sevd.xen import protocol as proto
from sevd.xen.hypervisor import HypervisorError, SevCapabilities

MIN_API = (0, 17)
CPUID_DEVICE = "/dev/cpu/0/cpuid"
CPUINFO = Path("/proc/cpuinfo")


@dataclasses.dataclass
class Check:
    name: str
    ok: bool
    detail: str
    hint: str = ""
    required: bool = True  # a failed optional check is a WARN: plain SEV works without it

    @property
    def verdict(self) -> str:
        return "PASS" if self.ok else "FAIL" if self.required else "WARN"


def _no_domains(domid: DomId) -> bool:
    return False  # the checks ask the hypervisor about no domain


def capabilities_of(config: Config) -> SevCapabilities:
    """The configured hypervisor's SEV capabilities; HypervisorError when it cannot say.

    Opened as the hypervisor backend alone: asking launches nothing, so no PSP needs to hear of it.
    """
    hypervisor = hypervisor_backend(config).open_hypervisor(config, _no_domains)
    try:
        return hypervisor.sev_capabilities()
    finally:
        hypervisor.close()


def sev_checks(capabilities: Callable[[], SevCapabilities]) -> list[Check]:
    """CPU SEV and CPU SEV-ES as the hypervisor runs them."""
    try:
        caps = capabilities()
    except HypervisorError as exc:
        return [Check("CPU SEV", False, str(exc), exc.hint)]
    except OSError as exc:  # the hypervisor backend could not even be opened
        return [Check("CPU SEV", False, str(exc), "check the [hypervisor] section of the configuration")]
    src = caps.source
    if not caps.available:
        return [
            Check("CPU SEV", False, f"{src} reports SEV not available", caps.why_unavailable),
            Check("CPU SEV-ES", False, "SEV-ES not available", "", required=False),
        ]
    mode = " — TEST MODE (sev=test), NOT SECURE: nothing is encrypted" if caps.test_mode else ""
    es_range = f"SEV-ES ASIDs 1..{caps.min_sev_asid - 1}" if caps.es_asids else "no SEV-ES ASIDs"
    sev = Check(
        "CPU SEV",
        True,
        f"{src}: SEV ASIDs {caps.min_sev_asid}..{caps.max_asid}, C-bit {caps.cbit}, "
        f"{caps.awaiting_flush} awaiting DF_FLUSH{mode}",
    )
    if caps.launches_es:
        es = Check(
            "CPU SEV-ES",
            caps.es and bool(caps.es_asids),
            f"{src}: {es_range}" if caps.es else f"{src}: SEV-ES not reported",
            "min_sev_asid is 1: no ES ASIDs" if caps.es else "SEV-ES needs EPYC 7xx2 or later",
            required=False,
        )
    else:
        es = Check(
            "CPU SEV-ES",
            False,
            f"{src}: SEV-ES {'reported' if caps.es else 'not reported'} ({es_range}), but this {src} launches "
            "plain SEV guests only (no SEV-ES VMSA or #VC handling)",
            "SEV-ES guests are refused at ENABLE; use sev_es = 0",
            required=False,
        )
    return [sev, es]


def _cpuid_8000001f() -> MemoryEncryption | None:
    """CPUID leaf 0x8000001F through the cpuid driver (/dev/cpu/0/cpuid, root), or None."""
    try:
        fd = os.open(CPUID_DEVICE, os.O_RDONLY)
    except OSError:
        return None
    try:
        raw = os.pread(fd, 16, 0x8000001F)
    except OSError:
        return None
    finally:
        os.close(fd)
    return MemoryEncryption.from_bytes(raw)


def cpu_checks() -> list[Check]:
    """CPU SEV and SEV-ES from this CPU (no hypervisor to ask): CPUID 0x8000001F, else /proc/cpuinfo flags."""
    leaf = _cpuid_8000001f()
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in CPUINFO.read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    if leaf is not None:
        sev, es = leaf.sev, leaf.es
        ranges = f"ASIDs 1..{leaf.max_asid}, plain SEV from {leaf.min_sev_asid}" if sev else ""
    else:
        sev, es = "sev" in flags, "sev_es" in flags
        ranges = "ASID ranges unknown (load the cpuid module for CPUID 0x8000001F)"
    return [
        Check(
            "CPU SEV",
            sev,
            f"SEV {'supported' if sev else 'not reported'}; {ranges}".rstrip("; "),
            "an AMD EPYC with SEV enabled in the BIOS (SMEE, SEV ASIDs > 0)",
        ),
        Check(
            "CPU SEV-ES",
            es,
            f"SEV-ES {'supported' if es else 'not reported'}",
            "SEV-ES needs EPYC 7xx2 or later and SEV-ES ASIDs in the BIOS",
            required=False,
        ),
    ]


SNP_ABSENT = "SEV and SEV-ES guests only"


def snp_check(caps: Callable[[], SevCapabilities] | None, client: PspClient | None) -> Check:
    """SEV-SNP in one line: the CPU's SNP bit (the hypervisor's capabilities, or this CPU's CPUID 0x8000001F
    when there is no hypervisor to ask), the RMP the hypervisor set up, then SNP_PLATFORM_STATUS when the PSP
    answers it.  Optional: plain SEV works without SNP."""
    name = "SEV-SNP"
    if caps is None:
        leaf = _cpuid_8000001f()
        if leaf is None or not leaf.snp:
            return Check(name, False, f"not available: the CPU does not report SEV-SNP; {SNP_ABSENT}", required=False)
        cpu, rmp, src = True, None, "CPU"
    else:
        try:
            c = caps()
        except (HypervisorError, OSError) as exc:
            return Check(name, False, f"not checked: {exc}", required=False)
        cpu, rmp, src = c.snp_cpu, c.snp, c.source
    if not cpu:
        return Check(name, False, f"not available: {src} reports no SEV-SNP on this CPU; {SNP_ABSENT}", required=False)
    if rmp is False:
        return Check(
            name, False, f"not enabled: {src}: no RMP set up (SEV-SNP off in the BIOS); {SNP_ABSENT}", required=False
        )
    where = f"{src}: CPU SEV-SNP, " + ("RMP set up" if rmp else "no hypervisor to say whether the RMP is set up")
    if client is None:
        return Check(name, False, f"{where}; SNP firmware not checked: no PSP", "fix /dev/sev first", required=False)
    try:
        st = SnpCommands(client).platform_status()
    except (FirmwareError, SevdError) as exc:
        return Check(
            name,
            False,
            f"{where}; the PSP does not answer SNP_PLATFORM_STATUS ({exc})",
            "a Dom0 kernel with the SNP platform ioctls (Linux 6.11 or later)",
            required=False,
        )
    return Check(
        name,
        True,
        f"{where}; SNP API {st.api_major}.{st.api_minor} build {st.build_id}, {st.state.name}, {st.guest_count} "
        f"guests, reported TCB {st.reported_tcb:#018x}",
        required=False,
    )


def psp_checks(config: Config) -> tuple[list[Check], PspClient | None]:
    """The PSP as its backend describes it, then a GUEST_STATUS probe of the guest-command ioctl."""
    presence = psp_presence(config)
    checks = [Check("/dev/sev", presence.ok, presence.detail, presence.hint)]
    if not presence.found:
        return checks, None
    try:
        client = open_psp(config, write=True)
    except (SevdError, OSError) as exc:
        checks.append(Check("guest-command ioctl", False, str(exc), "open /dev/sev for writing"))
        return checks, None
    try:
        GuestCommands(client).guest_status(NO_HANDLE)
        checks.append(Check("guest-command ioctl", True, "SEV_ISSUE_GUEST_CMD answers (GUEST_STATUS probe)"))
    except FirmwareError:
        checks.append(Check("guest-command ioctl", True, "SEV_ISSUE_GUEST_CMD answers (the firmware ran)"))
    except DeviceError as exc:
        missing = exc.errno in (errno.EINVAL, errno.ENOTTY)  # a stock sev-dev.c answers EINVAL
        checks.append(
            Check(
                "guest-command ioctl",
                False,
                "missing: the kernel does not know SEV_ISSUE_GUEST_CMD" if missing else str(exc),
                "boot a Dom0 kernel with the xen-patches/linux patch" if missing else "",
            )
        )
    return checks, client


def firmware_check(client: PspClient | None) -> Check:
    if client is None:
        return Check("firmware", False, "not checked: no PSP", "fix /dev/sev first")
    try:
        st = Platform(client).status()
    except (FirmwareError, SevdError) as exc:
        return Check("firmware", False, str(exc), "see dmesg for ccp/psp messages")
    return Check(
        "firmware",
        (st.api_major, st.api_minor) >= MIN_API,
        f"SEV API {st.api_major}.{st.api_minor} build {st.build}, {st.state.name}, {st.guests} guests",
        "update the SEV firmware (API 0.17 or later)",
    )


def xenstore_checks(config: Config) -> list[Check]:
    """xenstore reachable, and sevd ready on it."""
    try:
        xs = connect(config)
    except SevdError as exc:
        return [
            Check("xenstore", False, str(exc), "start xenstored (xencommons)"),
            Check("sevd", False, "not checked: no xenstore", "fix xenstore first"),
        ]
    try:
        xs.read("/")
        checks = [Check("xenstore", True, f"reachable at {config.xenstore_socket}")]
        problem = daemon_problem(xs)
        pid = xs.read(proto.DAEMON_PID)
        # daemon_problem already says how to start sevd when its ready node is missing: no hint twice
        hint = "" if problem and "systemctl start sevd" in problem else "systemctl restart sevd (or sevd run)"
        checks.append(Check("sevd", problem is None, problem or f"running, pid {pid}", hint))
        return checks
    finally:
        xs.close()


def stock_path_checks(config: Config) -> list[Check]:
    """What Debian's xendomains would do with SEV guests, on a host whose hypervisor backend has xendomains
    (`xendomains_files`: the real Xen's; a simulated host has none)."""
    files = getattr(hypervisor_backend(config), "xendomains_files", None)
    if files is None:
        return []
    from sevd.toolstack import xendomains

    defaults, auto = files()
    return xendomains.checks(defaults, auto)


def host_checks(config: Config) -> list[Check]:
    """Every check of `xl-sev ok`, in order: CPU, /dev/sev, guest ioctl, firmware, SEV-SNP, Xen, xenstore, sevd, and
    on Xen what xendomains would do with SEV guests."""
    hypervisor = hypervisor_presence(config)
    caps = functools.cache(lambda: capabilities_of(config)) if hypervisor.found else None
    checks = sev_checks(caps) if caps is not None else cpu_checks()
    more, client = psp_checks(config)
    checks += more
    checks.append(firmware_check(client))
    checks.append(snp_check(caps, client))
    checks.append(Check("Xen", hypervisor.ok, hypervisor.detail, hypervisor.hint))
    checks += xenstore_checks(config)
    checks += stock_path_checks(config)
    return checks


def ready(checks: list[Check]) -> bool:
    """Every required check passed."""
    return all(c.ok for c in checks if c.required)
