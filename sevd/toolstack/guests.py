"""The guest verbs of `xl-sev` after `create`: inject a secret, finish, destroy, and what sevd and the PSP
say of a guest (its published measurement, GUEST_STATUS).  Each opens its own xenstore connection."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

from sevd.abi.launch import LaunchMeasurement
from sevd.abi.policy import Policy
from sevd.abi.units import DomId, Handle
from sevd.backends import open_psp, open_toolstack
from sevd.config import Config
from sevd.errors import InputError
from sevd.guest import GuestCommands
from sevd.owner import files
from sevd.toolstack.domains import is_sev_guest, resolve_domain, sev_guest, xenstore
from sevd.toolstack.guestnodes import read_request, send_command, send_secret
from sevd.toolstack.liveness import daemon_problem, require_daemon
from sevd.toolstack.waiting import LaunchError, Waiter
from sevd.xen import protocol as proto

TEARDOWN_FAILED = "teardown failed"  # in the summary's error while sevd retries releasing a guest's context


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


def inject_secret(
    config: Config, dom: str, header_path: str, secret_path: str, gpa: str | None, timeout: float
) -> dict[str, int]:
    """LAUNCH_SECRET of the owner's packaged secret (sev-tool's two files) for a measured guest, at `gpa`
    (default: the boot image's first page); {"domid", "gpa", "length"}."""
    header = files.read_bytes(header_path, "secret header")
    data = files.read_bytes(secret_path, "packaged secret")
    with xenstore(config) as xs:
        domid, _, nodes = sev_guest(xs, dom)
        require_daemon(xs)
        if gpa is None:
            request = read_request(xs, domid)
            gpa_value = request.image_gpa if request is not None else 0
        else:
            try:
                gpa_value = int(gpa, 0)
            except ValueError:
                raise InputError(f"--gpa {gpa!r}: not a number") from None
        try:
            packet = proto.SecretPacket.parse(
                {
                    "header": base64.b64encode(header).decode(),
                    "data": base64.b64encode(data).decode(),
                    "gpa": f"0x{gpa_value:x}",
                }
            )
        except InputError as exc:
            raise InputError(
                str(exc).replace("secret/header", header_path).replace("secret/data", secret_path)
            ) from None
        if nodes.get("state") != proto.GuestState.MEASURED.value:
            raise LaunchError(f"domain {dom}: INVALID_REQUEST: needs state measured, it is {nodes.get('state')}")
        send_secret(xs, domid, packet)
        Waiter(xs).command(domid, timeout, "the secret to be injected")
    return {"domid": domid, "gpa": packet.gpa, "length": len(data)}


def finish(config: Config, dom: str, paused: bool, timeout: float) -> tuple[DomId, str]:
    """LAUNCH_FINISH for a measured guest, then unpause it unless `paused`; (domid, name)."""
    with xenstore(config) as xs:
        domid, name, nodes = sev_guest(xs, dom)
        require_daemon(xs)
        if nodes.get("state") != proto.GuestState.MEASURED.value:
            raise LaunchError(f"domain {dom}: INVALID_REQUEST: finish needs state measured, it is {nodes.get('state')}")
        send_command(xs, domid, proto.Command.FINISH)
        Waiter(xs).state(domid, proto.GuestState.RUNNING, timeout)
        if not paused:
            open_toolstack(config, xs).unpause(domid)
    return domid, name


@dataclasses.dataclass(frozen=True)
class Destroyed:
    domid: DomId
    name: str
    warning: str | None = None  # sevd is not running: it decommissions the guest when it starts


def destroy(config: Config, dom: str, timeout: float) -> Destroyed:
    """Destroy the domain (xl destroy); for an SEV guest wait until sevd has decommissioned its PSP context."""
    with xenstore(config) as xs:
        domid, name = resolve_domain(xs, dom)
        if domid == 0:
            raise InputError(f"domain {dom!r} is Dom0: xl-sev destroys guests, never the control domain")
        sev = is_sev_guest(xs, domid)
        open_toolstack(config, xs).destroy(domid)
        if sev:
            problem = daemon_problem(xs)
            if problem is None:
                nodes = Waiter(xs).wait(
                    domid,
                    lambda n: not n or TEARDOWN_FAILED in n.get("error", ""),
                    timeout,
                    "sevd to decommission it",
                    fail_on_error_state=False,
                )
                if nodes:  # sevd retries; the firmware's reason is the user's to see now
                    raise LaunchError(f"domain {domid} destroyed, its PSP context not released yet: {nodes['error']}")
            else:
                return Destroyed(domid, name, f"{problem}; sevd decommissions the guest when it starts")
    return Destroyed(domid, name)


def published_measurement(config: Config, dom: str) -> dict[str, Any]:
    """The launch measurement sevd published with the API version, build and policy (what `launch-measure` shows)."""
    with xenstore(config) as xs:
        _, _, nodes = sev_guest(xs, dom)
    if "measurement" not in nodes:
        state = nodes.get("state", "requested")
        detail = f": {nodes['error']}" if state == "error" and "error" in nodes else ""
        raise LaunchError(f"domain {dom}: no measurement (state {state}{detail})")
    measured = LaunchMeasurement.from_base64(nodes["measurement"], "measurement node")
    api_major, api_minor = (int(x) for x in nodes["api"].split("."))
    return {
        "measurement": measured.to_base64(),
        "api_major": api_major,
        "api_minor": api_minor,
        "build": int(nodes["build"]),
        "policy": nodes["policy"],
    }


def guest_status(config: Config, dom: str) -> dict[str, Any]:
    """GUEST_STATUS from the PSP for the guest's handle (read from xenstore)."""
    with xenstore(config) as xs:
        domid, _, nodes = sev_guest(xs, dom)
    handle = _int(nodes.get("handle"))
    if not handle:
        raise LaunchError(f"domain {dom}: no PSP handle yet (state {nodes.get('state', 'requested')})")
    st = GuestCommands(open_psp(config, write=True)).guest_status(Handle(handle))
    return {"domid": domid, "handle": handle, "state": st.state.name, "asid": st.asid, "policy": Policy(st.policy)}
