"""The xenstore protocol between the toolstack (`xl-sev`) and sevd: the one definition of every node.

docs/xenstore-protocol.md is the prose of this module.  Everything lives under /sevd, created by
Dom0 with permissions "n0": no guest can read or write any of it, its own nodes included.

    /sevd/daemon/{ready,pid}                          daemon
    /sevd/platform/{api,build,state,owner,es,guests,free-sev-asids,free-es-asids}   daemon
    /sevd/guest/<domid>/request/{policy,es,godh,session,attest,image-gpa,image-size,image-more}  toolstack
    /sevd/guest/<domid>/request/generation            toolstack, written last: submits the request
    /sevd/guest/<domid>/secret/{header,data,gpa}      toolstack (the owner's packet; removed after use)
    /sevd/guest/<domid>/command                       toolstack: "inject-secret" | "finish" | "destroy"
    /sevd/guest/<domid>/{ack,state,step,handle,asid,measurement,api,build,policy,error}  daemon
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import re

from sevd.abi.commands import CERT_SIZE, PACKET_HEADER_SIZE, SECRET_MAX_LEN, SESSION_SIZE
from sevd.abi.policy import Policy
from sevd.errors import InputError

ROOT = "/sevd"
PERMS = ("n0",)  # Dom0 owns every node; nobody else may read or write
DAEMON_READY = f"{ROOT}/daemon/ready"
DAEMON_PID = f"{ROOT}/daemon/pid"
PLATFORM = f"{ROOT}/platform"
GUESTS = f"{ROOT}/guest"
RELEASE_DOMAIN = "@releaseDomain"

PLATFORM_KEYS = ("api", "build", "state", "owner", "es", "guests", "free-sev-asids", "free-es-asids")


def guest_path(domid: int, *parts: str) -> str:
    return "/".join((GUESTS, str(domid), *parts))


class GuestState(enum.Enum):
    """The `state` node, in launch order; `error` and `destroyed` end a launch."""

    QUEUED = "queued"  # request accepted (ack written), not started
    LAUNCHING = "launching"  # PSP commands in flight (see `step`)
    MEASURED = "measured"  # measurement published, waiting for the owner's secret / finish
    RUNNING = "running"  # LAUNCH_FINISH done; the toolstack may unpause
    DESTROYING = "destroying"
    DESTROYED = "destroyed"
    ERROR = "error"  # see `error`; the PSP context was decommissioned


class Command(enum.Enum):
    INJECT_SECRET = "inject-secret"
    FINISH = "finish"
    DESTROY = "destroy"


_HEX_OR_DEC = re.compile(r"^(0x[0-9a-fA-F]{1,16}|[0-9]{1,20})$")


def _b64(name: str, text: str, size: int | None = None, max_size: int | None = None) -> bytes:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{name}: not valid base64") from None
    if size is not None and len(data) != size:
        raise InputError(f"{name}: must decode to {size} bytes, got {len(data)}")
    if max_size is not None and not 0 < len(data) <= max_size:
        raise InputError(f"{name}: must decode to 1..{max_size} bytes, got {len(data)}")
    return data


def _int(name: str, text: str, lo: int, hi: int) -> int:
    if not _HEX_OR_DEC.match(text):
        raise InputError(f"{name}: {text[:32]!r} is not a decimal or 0x-hex integer")
    value = int(text, 0)
    if not lo <= value <= hi:
        raise InputError(f"{name}: {value} is outside {lo}..{hi}")
    return value


MAX_IMAGE = 1 << 30
MAX_IMAGE_PIECES = 16


def _image_more(text: str) -> tuple[tuple[int, int], ...]:
    """`GPA+SIZE` pieces separated by single spaces, each page-aligned and non-empty."""
    name = "request/image-more"
    pieces = text.split(" ")
    if not 1 <= len(pieces) < MAX_IMAGE_PIECES:
        raise InputError(f"{name}: give 1..{MAX_IMAGE_PIECES - 1} GPA+SIZE pieces separated by single spaces")
    out = []
    for piece in pieces:
        gpa_text, plus, size_text = piece.partition("+")
        if not plus:
            raise InputError(f"{name}: {piece[:40]!r} is not GPA+SIZE")
        gpa = _int(name, gpa_text, 0, 2**52)
        size = _int(name, size_text, 1, MAX_IMAGE)
        if gpa % 4096:
            raise InputError(f"{name}: {gpa:#x} is not page aligned")
        out.append((gpa, size))
    return tuple(out)


def _flag(name: str, text: str) -> bool:
    if text not in ("0", "1"):
        raise InputError(f"{name}: must be 0 or 1, got {text[:16]!r}")
    return text == "1"


@dataclasses.dataclass(frozen=True)
class LaunchRequest:
    """What the toolstack asks for one domain; `parse` is the only way in, so every field is valid."""

    domid: int
    generation: int
    policy: Policy
    es: bool
    attest: bool
    image_gpa: int
    image_size: int
    godh: bytes | None = None
    session: bytes | None = None
    # Further (gpa, size) pieces of the image, measured in order after the first: a PVH guest's
    # ramdisk lies past a start-info page the toolstack puts between it and the kernel.
    image_more: tuple[tuple[int, int], ...] = ()

    @property
    def image_ranges(self) -> tuple[tuple[int, int], ...]:
        return ((self.image_gpa, self.image_size), *self.image_more)

    @classmethod
    def parse(cls, domid: int, nodes: dict[str, str]) -> LaunchRequest:
        """`nodes` maps the names under request/ to their values; errors name the node and the problem."""

        def need(key: str) -> str:
            if key not in nodes:
                raise InputError(f"request/{key}: missing")
            return nodes[key]

        known = {"policy", "es", "godh", "session", "attest", "image-gpa", "image-size", "image-more", "generation"}
        unknown = set(nodes) - known
        if unknown:
            raise InputError(f"request: unknown node(s) {', '.join(sorted(unknown))}")
        generation = _int("request/generation", need("generation"), 1, 2**63)
        try:
            policy = Policy.parse(_int("request/policy", need("policy"), 0, 0xFFFFFFFF))
        except InputError as exc:
            raise InputError(f"request/policy: {exc}") from None
        es = _flag("request/es", nodes.get("es", "0"))
        if es != policy.is_es():
            raise InputError("request/es: must equal the policy's ES bit")
        attest = _flag("request/attest", nodes.get("attest", "0"))
        godh = session = None
        if "godh" in nodes or "session" in nodes:
            godh = _b64("request/godh", need("godh"), CERT_SIZE)
            session = _b64("request/session", need("session"), SESSION_SIZE)
        image_gpa = _int("request/image-gpa", need("image-gpa"), 0, 2**52)
        image_size = _int("request/image-size", need("image-size"), 1, MAX_IMAGE)
        if image_gpa % 4096:
            raise InputError("request/image-gpa: must be page aligned")
        image_more = _image_more(nodes["image-more"]) if "image-more" in nodes else ()
        ranges = sorted(((image_gpa, image_size), *image_more))
        if sum(size for _, size in ranges) > MAX_IMAGE:
            raise InputError(f"request/image-more: the image's pieces add up to more than {MAX_IMAGE} bytes")
        for (gpa, size), (next_gpa, _) in zip(ranges, ranges[1:], strict=False):
            if gpa + size > next_gpa:
                raise InputError(f"request/image-more: the piece at {next_gpa:#x} overlaps the one at {gpa:#x}")
        return cls(domid, generation, policy, es, attest, image_gpa, image_size, godh, session, image_more)

    def to_nodes(self) -> dict[str, str]:
        """The toolstack's side: what to write (generation last, in the same transaction)."""
        nodes = {
            "policy": str(self.policy),
            "es": "1" if self.es else "0",
            "attest": "1" if self.attest else "0",
            "image-gpa": f"0x{self.image_gpa:x}",
            "image-size": str(self.image_size),
        }
        if self.image_more:
            nodes["image-more"] = " ".join(f"0x{gpa:x}+0x{size:x}" for gpa, size in self.image_more)
        if self.godh is not None and self.session is not None:
            nodes["godh"] = base64.b64encode(self.godh).decode()
            nodes["session"] = base64.b64encode(self.session).decode()
        nodes["generation"] = str(self.generation)
        return nodes


@dataclasses.dataclass(frozen=True)
class SecretPacket:
    header: bytes
    data: bytes
    gpa: int

    @classmethod
    def parse(cls, nodes: dict[str, str]) -> SecretPacket:
        for key in ("header", "data", "gpa"):
            if key not in nodes:
                raise InputError(f"secret/{key}: missing")
        header = _b64("secret/header", nodes["header"], PACKET_HEADER_SIZE)
        data = _b64("secret/data", nodes["data"], max_size=SECRET_MAX_LEN)
        if len(data) % 16:
            raise InputError(f"secret/data: length {len(data)} is not a multiple of 16")
        gpa = _int("secret/gpa", nodes["gpa"], 0, 2**52)
        if gpa % 16:
            raise InputError("secret/gpa: must be 16-byte aligned")
        return cls(header, data, gpa)

    def to_nodes(self) -> dict[str, str]:
        return {
            "header": base64.b64encode(self.header).decode(),
            "data": base64.b64encode(self.data).decode(),
            "gpa": f"0x{self.gpa:x}",
        }


def parse_command(text: str) -> Command:
    try:
        return Command(text)
    except ValueError:
        known = ", ".join(c.value for c in Command)
        raise InputError(f"command: {text[:32]!r} is not one of {known}") from None


def error_text(name: str, message: str) -> str:
    """The `error` node: the spec name (or INVALID_REQUEST / XEN_ERROR) first, so scripts can split on ':'."""
    return f"{name}: {message}"[:1024]
