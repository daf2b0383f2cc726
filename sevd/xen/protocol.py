"""The xenstore protocol between the toolstack (`xl-sev`) and sevd: the one definition of every node.

docs/xenstore-protocol.md is the prose of this module.  Everything lives under /sevd, created by
Dom0 with permissions "n0": no guest can read or write any of it, its own nodes included.

    /sevd/daemon/{ready,pid}                          daemon
    /sevd/platform/{api,build,state,owner,es,guests,free-sev-asids,free-es-asids}   daemon
    /sevd/guest/<domid>/request                       toolstack: the launch request, one node (`LaunchRequest`)
    /sevd/guest/<domid>/secret/{header,data,gpa}      toolstack (the owner's packet; removed after use)
    /sevd/guest/<domid>/command                       toolstack: "inject-secret" | "finish" | "destroy"
    /sevd/guest/<domid>/summary                       daemon: everything it publishes, one node (`GuestSummary`)

`request` and `summary` are versioned lines of `key=value` pairs separated by single spaces, so each
is written in one request and read in one request: a reader never sees half of a transition.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re

from sevd.abi.commands import CERT_SIZE, PACKET_HEADER_SIZE, SECRET_MAX_LEN, SESSION_SIZE
from sevd.abi.policy import Policy
from sevd.errors import InputError
from sevd.launch import LAUNCH_SEQUENCE, LEGACY_STEP_NAMES, PUBLISHED_STEPS, Command, GuestState

__all__ = ["Command", "GuestState"]  # defined by the launch core; published here as the summary's `state`

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


# Node formats: `request` and `summary` are one line of `key=value` pairs separated by single spaces,
# version first (`v=1`).  Values hold no spaces, except the summary's `error`, which comes last and
# runs to the end of the line.  A reader refuses a version it does not know; the summary's readers
# skip keys they do not know (sevd may add some within a version), sevd refuses unknown request keys.
VERSION = 1
LAUNCH_STEPS = tuple(str(step) for step in LAUNCH_SEQUENCE)
STEPS = tuple(str(step) for step in PUBLISHED_STEPS)  # the summary's `step`: the last one done

_HEX_OR_DEC = re.compile(r"^(0x[0-9a-fA-F]{1,16}|[0-9]{1,20})$")
_API = re.compile(r"^[0-9]{1,3}\.[0-9]{1,3}$")
_NAME = re.compile(r"^[!-~]{1,64}$")  # a domain name as a value: printable ASCII, no space
_GENERATION = re.compile(r"(?:^| )generation=([0-9]{1,19})(?= |$)")


def parse_pairs(node: str, text: str, last: str | None = None) -> dict[str, str]:
    """`v=1 key=value ...` as a dict without `v`; `last` names the one key whose value may hold spaces.

    Anything else is refused naming `node` and what is wrong: a version other than VERSION, a token
    that is not key=value, an empty value, a key given twice, a control character.
    """
    if not text.isprintable():
        raise InputError(f"{node}: holds a control character (one line of key=value pairs expected)")
    free = None
    if last is not None:  # other values hold no space, so " last=" can only begin the free-text pair
        text, found, free = text.partition(f" {last}=")
        free = free if found else None
    version, *tokens = text.split(" ")
    if not version.startswith("v="):
        raise InputError(f"{node}: must start with the version v={VERSION}, got {version[:32]!r}")
    if version != f"v={VERSION}":
        raise InputError(f"{node}: version {version[2:34]!r} is not understood (this sevd speaks v={VERSION})")
    fields: dict[str, str] = {}
    pairs = [token.partition("=") for token in tokens]
    if free is not None:
        pairs.append((last, "=", free))
    for key, eq, value in pairs:
        if not eq or not key:
            raise InputError(f"{node}: {key[:32]!r} is not key=value (pairs are separated by one space)")
        if not value:
            raise InputError(f"{node} {key[:32]}: empty value")
        if key in fields or key == "v":
            raise InputError(f"{node} {key[:32]}: given twice")
        fields[key] = value
    return fields


def format_pairs(fields: dict[str, str]) -> str:
    """The inverse of parse_pairs: version first, then `fields` in order (put a free-text key last)."""
    return " ".join([f"v={VERSION}", *(f"{key}={value}" for key, value in fields.items())])


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


def _flag(name: str, text: str) -> bool:
    if text not in ("0", "1"):
        raise InputError(f"{name}: must be 0 or 1, got {text[:16]!r}")
    return text == "1"


REQUEST_KEYS = (
    "generation", "name", "policy", "es", "attest", "image-gpa", "image-size", "image-more", "godh", "session",
)  # fmt: skip
MAX_IMAGE = 1 << 30
MAX_IMAGE_PIECES = 16


def _image_more(text: str) -> tuple[tuple[int, int], ...]:
    """`GPA+SIZE` pieces separated by commas, each page-aligned and non-empty."""
    name = "request image-more"
    pieces = text.split(",")
    if not 1 <= len(pieces) < MAX_IMAGE_PIECES:
        raise InputError(f"{name}: give 1..{MAX_IMAGE_PIECES - 1} GPA+SIZE pieces separated by commas")
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


def fits_name(name: str) -> bool:
    """Whether a domain name can travel in the request and the summary (else the toolstack leaves it out)."""
    return bool(_NAME.match(name))


def _name(node: str, text: str) -> str:
    if not _NAME.match(text):
        raise InputError(f"{node} name: {text[:32]!r} is not 1-64 printable ASCII characters without spaces")
    return text


@dataclasses.dataclass(frozen=True)
class LaunchRequest:
    """The `request` node: what the toolstack asks for one domain.

    `parse`/`parse_text` are the only ways in, so every field is valid.  The node is written whole in
    one write, which submits it; a new request is the node rewritten with a higher generation.
    `name` (optional) is the domain's name as the toolstack gave it; sevd shows it in the summary.

        v=1 generation=1 name=web1 policy=0x00000001 es=0 attest=1 image-gpa=0xffe00000 image-size=2097152 godh=…
    """

    domid: int
    generation: int
    policy: Policy
    es: bool
    attest: bool
    image_gpa: int
    image_size: int
    godh: bytes | None = None
    session: bytes | None = None
    name: str | None = None
    # Further (gpa, size) pieces of the image, measured in order after the first: a PVH guest's
    # ramdisk lies past a start-info page the toolstack puts between it and the kernel.
    image_more: tuple[tuple[int, int], ...] = ()

    @property
    def image_ranges(self) -> tuple[tuple[int, int], ...]:
        return ((self.image_gpa, self.image_size), *self.image_more)

    @classmethod
    def parse_text(cls, domid: int, text: str) -> LaunchRequest:
        return cls.parse(domid, parse_pairs("request", text))

    @classmethod
    def parse(cls, domid: int, fields: dict[str, str]) -> LaunchRequest:
        """`fields` maps the request's keys to their values; errors name the key and the problem."""

        def need(key: str) -> str:
            if key not in fields:
                raise InputError(f"request {key}: missing")
            return fields[key]

        unknown = set(fields) - set(REQUEST_KEYS)
        if unknown:
            raise InputError(f"request: unknown key(s) {', '.join(sorted(k[:32] for k in unknown))}")
        generation = _int("request generation", need("generation"), 1, 2**63)
        try:
            policy = Policy.parse(_int("request policy", need("policy"), 0, 0xFFFFFFFF))
        except InputError as exc:
            raise InputError(f"request policy: {exc}") from None
        es = _flag("request es", fields.get("es", "0"))
        if es != policy.is_es():
            raise InputError("request es: must equal the policy's ES bit")
        attest = _flag("request attest", fields.get("attest", "0"))
        godh = session = None
        if "godh" in fields or "session" in fields:
            godh = _b64("request godh", need("godh"), CERT_SIZE)
            session = _b64("request session", need("session"), SESSION_SIZE)
        image_gpa = _int("request image-gpa", need("image-gpa"), 0, 2**52)
        image_size = _int("request image-size", need("image-size"), 1, MAX_IMAGE)
        if image_gpa % 4096:
            raise InputError("request image-gpa: must be page aligned")
        name = _name("request", fields["name"]) if "name" in fields else None
        image_more = _image_more(fields["image-more"]) if "image-more" in fields else ()
        ranges = sorted(((image_gpa, image_size), *image_more))
        if sum(size for _, size in ranges) > MAX_IMAGE:
            raise InputError(f"request image-more: the image's pieces add up to more than {MAX_IMAGE} bytes")
        for (gpa, size), (next_gpa, _) in zip(ranges, ranges[1:], strict=False):
            if gpa + size > next_gpa:
                raise InputError(f"request image-more: the piece at {next_gpa:#x} overlaps the one at {gpa:#x}")
        return cls(domid, generation, policy, es, attest, image_gpa, image_size, godh, session, name, image_more)

    def to_fields(self) -> dict[str, str]:
        fields = {"generation": str(self.generation)}
        if self.name is not None:
            fields["name"] = self.name
        fields |= {
            "policy": str(self.policy),
            "es": "1" if self.es else "0",
            "attest": "1" if self.attest else "0",
            "image-gpa": f"0x{self.image_gpa:x}",
            "image-size": str(self.image_size),
        }
        if self.image_more:
            fields["image-more"] = ",".join(f"0x{gpa:x}+0x{size:x}" for gpa, size in self.image_more)
        if self.godh is not None and self.session is not None:
            fields["godh"] = base64.b64encode(self.godh).decode()
            fields["session"] = base64.b64encode(self.session).decode()
        return fields

    def format(self) -> str:
        """The toolstack's side: the `request` node's value."""
        return format_pairs(self.to_fields())


def request_generation(text: str) -> int | None:
    """The generation of a request node, found even in one refused for another reason (so sevd can ack it)."""
    match = _GENERATION.search(text)
    if match is None or not 1 <= int(match.group(1)) <= 2**63:
        return None
    return int(match.group(1))


@dataclasses.dataclass(frozen=True)
class GuestSummary:
    """The `summary` node: everything sevd publishes about one guest, rewritten whole at each transition.

        v=1 ack=1 name=web1 state=running step=FINISH handle=1 asid=5 api=0.24 build=15 policy=0x00000000 measurement=…

    `ack` is the request generation sevd has taken (accepted or refused); `name` the request's;
    `error` ("NAME: message", NAME the firmware status by its spec name, or INVALID_REQUEST,
    XEN_ERROR, INTERRUPTED, DEVICE_*) says what failed last and comes last.  Keys without a value
    yet are left out.
    """

    state: GuestState | None = None  # None: sevd has taken no request (e.g. it refused a command before one)
    ack: int | None = None
    name: str | None = None
    step: str | None = None
    handle: int | None = None
    asid: int | None = None
    api: str | None = None
    build: int | None = None
    policy: Policy | None = None
    measurement: str | None = None  # base64 of measure(32) || mnonce(16), as LAUNCH_MEASURE returns them
    error: str | None = None

    @classmethod
    def parse(cls, text: str) -> GuestSummary:
        """Refuses malformed content with InputError naming the key; keys it does not know are skipped."""
        fields = parse_pairs("summary", text, last="error")
        state = None
        if "state" in fields:
            try:
                state = GuestState(fields["state"])
            except ValueError:
                known = ", ".join(s.value for s in GuestState)
                raise InputError(f"summary state: {fields['state'][:32]!r} is not one of {known}") from None
        step = fields.get("step")
        if step is not None:
            step = LEGACY_STEP_NAMES.get(step, step)  # an older sevd's name for it
        if step is not None and step not in STEPS:
            raise InputError(f"summary step: {step[:32]!r} is not one of {', '.join(STEPS)}")
        api = fields.get("api")
        if api is not None and not _API.match(api):
            raise InputError(f"summary api: {api[:32]!r} is not MAJOR.MINOR")
        policy = None
        if "policy" in fields:
            try:
                policy = Policy.parse(_int("summary policy", fields["policy"], 0, 0xFFFFFFFF))
            except InputError as exc:
                raise InputError(f"summary policy: {exc}") from None
        measurement = fields.get("measurement")
        if measurement is not None:
            _b64("summary measurement", measurement, 48)

        def number(key: str, hi: int) -> int | None:
            return _int(f"summary {key}", fields[key], 0, hi) if key in fields else None

        return cls(
            state=state,
            ack=None if "ack" not in fields else _int("summary ack", fields["ack"], 1, 2**63),
            name=_name("summary", fields["name"]) if "name" in fields else None,
            step=step,
            handle=number("handle", 0xFFFFFFFF),
            asid=number("asid", 0xFFFFFFFF),
            api=api,
            build=number("build", 0xFF),
            policy=policy,
            measurement=measurement,
            error=fields.get("error"),
        )

    def to_fields(self) -> dict[str, str]:
        """The values as text, keyed as in the node (what the read verbs show); absent ones left out."""
        values = {
            "ack": self.ack,
            "name": self.name,
            "state": self.state.value if self.state else None,
            "step": self.step,
            "handle": self.handle,
            "asid": self.asid,
            "api": self.api,
            "build": self.build,
            "policy": self.policy,
            "measurement": self.measurement,
            "error": self.error,
        }
        return {key: str(value) for key, value in values.items() if value is not None}

    def format(self) -> str:
        if self.error is not None and not self.error:
            raise ValueError("summary error: empty")
        return format_pairs(self.to_fields())


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
    """The summary's `error`: the spec name (or INVALID_REQUEST / XEN_ERROR) first, so scripts can split on ':'.

    One line of printable ASCII (xenstore values are text; the summary ends with it), at most 1024 characters.
    """
    text = f"{name}: {message}".encode("ascii", "backslashreplace").decode()
    return "".join(c if c.isprintable() else " " for c in text)[:1024]
