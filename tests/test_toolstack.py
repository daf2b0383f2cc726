"""Host code of xl-sev without processes: the Waiter against a scripted xenstore, the backends' self-descriptions
(the /dev/sev and Xen lines of `xl-sev ok`, the AMD roots exported with the chain) and the host checks built on them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sevd import backends
from sevd.config import Config
from sevd.toolstack import hostcheck
from sevd.toolstack.waiting import LaunchError, Waiter
from sevd.xen import protocol as proto
from sevd.xen.hypervisor import HypervisorError, SevCapabilities
from sevd_sim.backends import SimulatedBackend
from sevd_sim.host import SimulatedHost

DOMID = 3


class ScriptedXenstore:
    """The few Xenstore calls a Waiter makes; each next_event() moves the guest's summary to the next one."""

    def __init__(self, summaries: list[proto.GuestSummary | None], daemon_ready: bool = True) -> None:
        self.summaries = summaries
        self.at = 0
        self.watches: list[list[str]] = []
        self.events = 0
        self.daemon_ready = daemon_ready

    def _summary(self) -> proto.GuestSummary | None:
        return self.summaries[min(self.at, len(self.summaries) - 1)]

    def list(self, path: str) -> list[str]:
        assert path == proto.guest_path(DOMID)
        return [] if self._summary() is None else ["request", "summary"]

    def read(self, path: str) -> str | None:
        if path == proto.guest_path(DOMID, "summary"):
            summary = self._summary()
            return None if summary is None else summary.format()
        if path == proto.DAEMON_READY:
            return "1" if self.daemon_ready else None
        if path == proto.DAEMON_PID:
            return str(os.getpid())
        raise AssertionError(path)

    def watch(self, paths: list[str]) -> None:
        self.watches.append(paths)

    def next_event(self, timeout: float | None) -> str | None:
        self.events += 1
        self.at += 1
        return proto.guest_path(DOMID)


class Steps:
    def __init__(self) -> None:
        self.steps: list[str] = []
        self.closed = 0

    def line(self, text: str) -> None:
        raise AssertionError("a wait reports steps only")

    def step(self, text: str) -> None:
        self.steps.append(text)

    def close(self) -> None:
        self.closed += 1


def launching(step: str | None) -> proto.GuestSummary:
    return proto.GuestSummary(state=proto.GuestState.LAUNCHING, step=step, ack=1)


def test_a_waiter_watches_a_guest_once_and_reports_each_state_once() -> None:
    # sevd writes the summary once per state transition (docs/xenstore-protocol.md): `launching` shows with
    # the step it was published with, a later step within it adds no line.
    xs = ScriptedXenstore(
        [
            proto.GuestSummary(state=proto.GuestState.QUEUED, ack=1),
            launching("MAKE_SEV"),
            launching("MAKE_SEV"),
            launching("LAUNCH_START"),
            proto.GuestSummary(state=proto.GuestState.MEASURED, step="LAUNCH_MEASURE", ack=1),
            proto.GuestSummary(state=proto.GuestState.RUNNING, step="LAUNCH_FINISH", ack=1),
        ]
    )
    waiter, steps = Waiter(xs), Steps()  # type: ignore[arg-type]
    nodes = waiter.state(DOMID, proto.GuestState.MEASURED, 5, steps)
    assert nodes["state"] == "measured" and nodes["step"] == "LAUNCH_MEASURE"
    waiter.state(DOMID, proto.GuestState.RUNNING, 5, steps)
    assert steps.steps == ["queued", "launching: MAKE_SEV", "measured", "running"]
    assert xs.watches == [[proto.guest_path(DOMID)]], "one watch per guest, however many waits"


def test_a_waiter_stops_at_the_error_state_with_sevds_reason() -> None:
    failed = proto.GuestSummary(state=proto.GuestState.ERROR, ack=1, error="POLICY_FAILURE: policy refused")
    xs = ScriptedXenstore([launching("MAKE_SEV"), failed])
    steps = Steps()
    with pytest.raises(LaunchError, match=f"domain {DOMID}: POLICY_FAILURE: policy refused"):
        Waiter(xs).state(DOMID, proto.GuestState.RUNNING, 5, steps)  # type: ignore[arg-type]
    assert steps.closed == 1, "an open step line is ended before the error is shown"


def test_a_waiter_times_out_naming_the_state_and_why_sevd_did_not_answer() -> None:
    xs = ScriptedXenstore([launching("MAKE_SEV")], daemon_ready=False)
    with pytest.raises(LaunchError) as err:
        Waiter(xs).state(DOMID, proto.GuestState.RUNNING, 0.01)  # type: ignore[arg-type]
    assert "timed out after 0.01 s waiting for state running (state launching)" in str(err.value)
    assert "sevd is not running" in str(err.value)


def test_a_command_is_done_when_its_node_is_gone_and_fails_with_the_summarys_error() -> None:
    xs = ScriptedXenstore([proto.GuestSummary(state=proto.GuestState.MEASURED, ack=1, error="BAD_MEASUREMENT: no")])
    with pytest.raises(LaunchError, match="BAD_MEASUREMENT: no"):
        Waiter(xs).command(DOMID, 5, "the secret")  # type: ignore[arg-type]


def test_gone_waits_until_the_guests_nodes_are_removed() -> None:
    xs = ScriptedXenstore([proto.GuestSummary(state=proto.GuestState.DESTROYING, ack=1), None])
    Waiter(xs).gone(DOMID, 5, "decommission")  # type: ignore[arg-type]
    assert xs.events == 1


# -- the backends describe themselves ------------------------------------------------------------------------------


def test_device_presence_says_missing_then_not_writable_then_ready(tmp_path: Path) -> None:
    device = backends.DeviceBackend()
    node = tmp_path / "sev"
    missing = device.psp_presence(Config(psp_path=str(node)))
    assert not missing.ok and not missing.found and missing.detail == f"{node} missing, not writable"
    node.write_bytes(b"")
    assert device.psp_presence(Config(psp_path=str(node))).ok
    node.chmod(0o400)
    if not os.access(node, os.W_OK):  # root may write it anyway
        read_only = device.psp_presence(Config(psp_path=str(node)))
        assert not read_only.ok and read_only.found and "modprobe ccp" in read_only.hint


@pytest.mark.parametrize(
    ("capabilities", "ok", "found", "detail"),
    [
        (None, False, False, "not running under Xen"),
        ("", False, True, "this is not Dom0"),
        ("control_d\n", True, True, "Xen Dom0"),
    ],
)
def test_xen_presence_reads_proc_xen_capabilities(
    tmp_path: Path, capabilities: str | None, ok: bool, found: bool, detail: str
) -> None:
    xen = backends.XenBackend()
    xen.CAPABILITIES = tmp_path / "capabilities"
    if capabilities is not None:
        xen.CAPABILITIES.write_text(capabilities)
    presence = xen.hypervisor_presence(Config())
    assert (presence.ok, presence.found) == (ok, found) and presence.detail.startswith(detail)


@pytest.fixture(scope="module")
def sim_config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    host = SimulatedHost.create(tmp_path_factory.mktemp("sim") / "host", memory_size=16 << 20)
    return Config.load(host.root / "sevd.toml")


def test_the_simulated_backend_describes_itself(sim_config: Config) -> None:
    sim = SimulatedBackend()
    assert sim.psp_presence(sim_config) == backends.Presence(True, f"simulated PSP at {sim_config.psp_path}")
    assert sim.hypervisor_presence(sim_config).detail == f"simulated Xen at {sim_config.hypervisor_path}"
    found = backends.psp_backend(sim_config)  # through the entry point, as the product finds it
    assert found.psp_presence(sim_config) == sim.psp_presence(sim_config)


def test_an_unknown_backend_is_named(sim_config: Config) -> None:
    from dataclasses import replace

    from sevd.errors import InputError

    with pytest.raises(InputError, match="psp backend 'nowhere': not built in"):
        backends.psp_presence(replace(sim_config, psp_backend="nowhere"))


# -- the host checks on those answers ----------------------------------------------------------------------------


def caps(**kw: object) -> SevCapabilities:
    values: dict[str, object] = dict(
        source="Xen", available=True, min_sev_asid=5, max_asid=15, cbit=51, es=True, launches_es=True
    )
    return SevCapabilities(**(values | kw))  # type: ignore[arg-type]


def test_sev_es_passes_only_with_es_asids_on_a_hypervisor_that_launches_es() -> None:
    _, es = hostcheck.sev_checks(lambda: caps())
    assert es.ok and es.detail == "Xen: SEV-ES ASIDs 1..4"
    _, none = hostcheck.sev_checks(lambda: caps(min_sev_asid=1))
    assert not none.ok and not none.required and none.detail == "Xen: no SEV-ES ASIDs"
    _, plain = hostcheck.sev_checks(lambda: caps(launches_es=False))
    assert not plain.ok and plain.verdict == "WARN" and "launches plain SEV guests only" in plain.detail


def test_a_hypervisor_that_cannot_answer_fails_cpu_sev_with_its_hint() -> None:
    def refused() -> SevCapabilities:
        raise HypervisorError("cannot load libxencall.so.1", hint="boot the patched Xen (xen-patches/)")

    (check,) = hostcheck.sev_checks(refused)
    assert (check.ok, check.detail, check.hint) == (
        False,
        "cannot load libxencall.so.1",
        "boot the patched Xen (xen-patches/)",
    )


def test_host_checks_ask_the_backends_not_their_names(sim_config: Config) -> None:
    checks = {c.name: c for c in hostcheck.host_checks(sim_config)}
    assert list(checks) == [
        "CPU SEV",
        "CPU SEV-ES",
        "/dev/sev",
        "guest-command ioctl",
        "firmware",
        "SEV-SNP",
        "Xen",
        "xenstore",
        "sevd",
    ]
    assert checks["CPU SEV"].ok and checks["CPU SEV"].detail.startswith("simulated: SEV ASIDs 5..")
    assert checks["/dev/sev"].detail == f"simulated PSP at {sim_config.psp_path}"
    assert checks["guest-command ioctl"].ok and checks["firmware"].ok
    assert not checks["xenstore"].ok, "no xenstored runs for this host"
    assert not hostcheck.ready(list(checks.values()))
