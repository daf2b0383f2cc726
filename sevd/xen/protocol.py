"""The xenstore protocol between the toolstack (`xl-sev`) and sevd: the one definition of every node.

docs/xenstore-protocol.md is the prose of this module.  Everything lives under /sevd, created by
Dom0 with permissions "n0": no guest can read or write any of it, its own nodes included.

    /sevd/daemon/{ready,pid}                          daemon
    /sevd/platform/{api,build,state,owner,es,guests}  daemon: PLATFORM_STATUS (`PlatformNodes`)
    /sevd/guest/<domid>/request                       toolstack: the launch request, one node (`LaunchRequest`)
    /sevd/guest/<domid>/secret/{header,data,gpa}      toolstack (the owner's packet, `SecretPacket`; removed after use)
    /sevd/guest/<domid>/command                       toolstack: "inject-secret" | "finish" | "destroy"
    /sevd/guest/<domid>/summary                       daemon: everything it publishes, one node (`GuestSummary`)

`request` and `summary` are versioned lines of `key=value` pairs separated by single spaces, so each
is written in one request and read in one request: a reader never sees half of a transition.

Each message is one `Layout`: a tuple of `Field(key, attribute, codec, ...)` in wire order.  Parsing and
formatting are generated from it; a codec turns one value into text and back, and refuses bad text with
an InputError that names the node and the key (`request image-gpa: ...`, `secret/gpa: ...`).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import re
from collections.abc import Callable, Mapping
from typing import Any, Generic, Literal, TypeVar

from sevd.abi.commands import CERT_SIZE, MEASUREMENT_SIZE, PACKET_HEADER_SIZE, SECRET_MAX_LEN, SESSION_SIZE
from sevd.abi.commands import PlatformState as PspPlatformState
from sevd.abi.policy import Policy
from sevd.abi.units import HANDLE_MAX, PAGE_SIZE, PHYS_ADDR_LIMIT, Asid, DomId, Gpa, Handle
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


def guest_path(domid: DomId, *parts: str) -> str:
    return "/".join((GUESTS, str(domid), *parts))


# Node formats: `request` and `summary` are one line of `key=value` pairs separated by single spaces,
# version first (`v=1`).  Values hold no spaces, except the summary's `error`, which comes last and
# runs to the end of the line.  A reader refuses a version it does not know; the summary's readers
# skip keys they do not know (sevd may add some within a version), sevd refuses unknown request keys.
VERSION = 1
LAUNCH_STEPS = tuple(str(step) for step in LAUNCH_SEQUENCE)
STEPS = tuple(str(step) for step in PUBLISHED_STEPS)  # the summary's `step`: the last one done

MAX_IMAGE = 1 << 30
MAX_IMAGE_PIECES = 16
ERROR_MAX = 1024  # the summary's `error`, in characters

_HEX_OR_DEC = re.compile(r"^(0x[0-9a-fA-F]{1,16}|[0-9]{1,20})$")
_API = re.compile(r"^[0-9]{1,3}\.[0-9]{1,3}$")
_NAME = re.compile(r"^[!-~]{1,64}$")  # a domain name as a value: printable ASCII, no space
_GENERATION = re.compile(r"(?:^| )generation=(0x[0-9a-fA-F]{1,16}|[0-9]{1,20})(?= |$)")


def parse_pairs(node: str, text: str, last: str | None = None) -> dict[str, str]:
    """`v=1 key=value ...` as a dict without `v`; `last` names the one key whose value may hold spaces.

    Anything else is refused naming `node` and what is wrong: a version other than VERSION, a token
    that is not key=value, an empty value, a key given twice, a control character.
    """
    if not text.isprintable():
        raise InputError(f"{node}: holds a control character (one line of key=value pairs expected)")
    pairs: list[tuple[str, str, str]] = []
    if last is not None:  # other values hold no space, so " last=" can only begin the free-text pair
        text, found, free = text.partition(f" {last}=")
        if found:
            pairs.append((last, "=", free))
    version, *tokens = text.split(" ")
    if not version.startswith("v="):
        raise InputError(f"{node}: must start with the version v={VERSION}, got {version[:32]!r}")
    if version != f"v={VERSION}":
        raise InputError(f"{node}: version {version[2:34]!r} is not understood (this sevd speaks v={VERSION})")
    fields: dict[str, str] = {}
    for key, eq, value in [token.partition("=") for token in tokens] + pairs:
        if not eq or not key:
            raise InputError(f"{node}: {key[:32]!r} is not key=value (pairs are separated by one space)")
        if not value:
            raise InputError(f"{node} {key[:32]}: empty value")
        if key in fields or key == "v":
            raise InputError(f"{node} {key[:32]}: given twice")
        fields[key] = value
    return fields


def format_pairs(fields: Mapping[str, str]) -> str:
    """The inverse of parse_pairs: version first, then `fields` in order (put a free-text key last)."""
    return " ".join([f"v={VERSION}", *(f"{key}={value}" for key, value in fields.items())])


# -- codecs: one kind of value as text -----------------------------------------------------------------------

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Codec(Generic[T]):
    """How one kind of value travels as text.

    `parse(name, text)` returns the value or raises InputError starting with `name` (the node and key);
    `format(value)` is its text, which `parse` accepts.
    """

    parse: Callable[[str, str], T]
    format: Callable[[T], str]


def _number(text: str) -> int:
    """A decimal (leading zeros allowed) or 0x-hex integer that _HEX_OR_DEC matched."""
    return int(text, 16) if text.startswith("0x") else int(text, 10)


def _int(name: str, text: str, lo: int, hi: int) -> int:
    if not _HEX_OR_DEC.match(text):
        raise InputError(f"{name}: {text[:32]!r} is not a decimal or 0x-hex integer")
    value = _number(text)
    if not lo <= value <= hi:
        raise InputError(f"{name}: {value} is outside {lo}..{hi}")
    return value


def integer(lo: int, hi: int, *, hex_out: bool = False, align: int = 1, what: str = "") -> Codec[int]:
    """A decimal or 0x-hex integer in lo..hi (written in hex when `hex_out`); `align`: it must be a multiple."""

    def parse(name: str, text: str) -> int:
        value = _int(name, text, lo, hi)
        if value % align:
            raise InputError(f"{name}: must be {what} aligned")
        return value

    return Codec(parse, (lambda value: f"0x{value:x}") if hex_out else str)


def _flag(name: str, text: str) -> bool:
    if text not in ("0", "1"):
        raise InputError(f"{name}: must be 0 or 1, got {text[:16]!r}")
    return text == "1"


FLAG: Codec[bool] = Codec(_flag, lambda value: "1" if value else "0")


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


def blob(size: int | None = None, *, max_size: int | None = None, multiple: int = 1) -> Codec[bytes]:
    """Bytes as base64: exactly `size` of them, or 1..`max_size` in a multiple of `multiple`."""

    def parse(name: str, text: str) -> bytes:
        data = _b64(name, text, size, max_size)
        if len(data) % multiple:
            raise InputError(f"{name}: length {len(data)} is not a multiple of {multiple}")
        return data

    return Codec(parse, lambda data: base64.b64encode(data).decode())


def checked_text(inner: Codec[Any]) -> Codec[str]:
    """Text kept as written once `inner` accepts it (the summary's measurement: base64 the readers pass on)."""

    def parse(name: str, text: str) -> str:
        inner.parse(name, text)
        return text

    return Codec(parse, str)


def pattern(regex: re.Pattern[str], what: str) -> Codec[str]:
    def parse(name: str, text: str) -> str:
        if not regex.match(text):
            raise InputError(f"{name}: {text[:32]!r} is not {what}")
        return text

    return Codec(parse, str)


def one_of(values: tuple[str, ...]) -> Codec[str]:
    def parse(name: str, text: str) -> str:
        if text not in values:
            raise InputError(f"{name}: {text[:32]!r} is not one of {', '.join(values)}")
        return text

    return Codec(parse, str)


def _step(name: str, text: str) -> str:
    """A launch step's name; an older sevd's name for it reads as today's."""
    return one_of(STEPS).parse(name, str(LEGACY_STEP_NAMES.get(text, text)))


STEP: Codec[str] = Codec(_step, str)


E = TypeVar("E", bound=enum.Enum)


def enum_codec(kind: type[E], *, by: Literal["value", "name"] = "value") -> Codec[E]:
    """An enum member by its value (GuestState: `running`) or its name (PlatformState: `WORKING`)."""
    table = {str(member.value if by == "value" else member.name): member for member in kind}

    def parse(name: str, text: str) -> E:
        if text not in table:
            raise InputError(f"{name}: {text[:32]!r} is not one of {', '.join(table)}")
        return table[text]

    return Codec(parse, lambda member: str(member.value if by == "value" else member.name))


def _policy(name: str, text: str) -> Policy:
    try:
        return Policy.parse(_int(name, text, 0, 0xFFFFFFFF))
    except InputError as exc:
        message = str(exc)
        raise InputError(message if message.startswith(name) else f"{name}: {message}") from None


POLICY: Codec[Policy] = Codec(_policy, str)
TEXT: Codec[str] = Codec(lambda name, text: text, str)


def _image_pieces(name: str, text: str) -> tuple[tuple[Gpa, int], ...]:
    """`GPA+SIZE` pieces separated by commas, each page-aligned and non-empty."""
    pieces = text.split(",")
    if not 1 <= len(pieces) < MAX_IMAGE_PIECES:
        raise InputError(f"{name}: give 1..{MAX_IMAGE_PIECES - 1} GPA+SIZE pieces separated by commas")
    out = []
    for piece in pieces:
        gpa_text, plus, size_text = piece.partition("+")
        if not plus:
            raise InputError(f"{name}: {piece[:40]!r} is not GPA+SIZE")
        gpa = _int(name, gpa_text, 0, PHYS_ADDR_LIMIT)
        size = _int(name, size_text, 1, MAX_IMAGE)
        if gpa % PAGE_SIZE:
            raise InputError(f"{name}: {gpa:#x} is not page aligned")
        out.append((Gpa(gpa), size))
    return tuple(out)


IMAGE_PIECES: Codec[tuple[tuple[Gpa, int], ...]] = Codec(
    _image_pieces, lambda pieces: ",".join(f"0x{gpa:x}+0x{size:x}" for gpa, size in pieces)
)
NAME = pattern(_NAME, "1-64 printable ASCII characters without spaces")


def fits_name(name: str) -> bool:
    """Whether a domain name can travel in the request and the summary (else the toolstack leaves it out)."""
    return bool(_NAME.match(name))


# -- layouts: one message as a tuple of fields ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Field:
    """One key of a message: its `key` on the wire, the `attr` of the Python value and the `codec` between them.

    Absent from the wire, a `required` field is refused ("missing"); another takes `default`.  A value of
    None or () is left out when the message is written.
    """

    key: str
    attr: str
    codec: Codec[Any]
    required: bool = False
    default: Any = None


@dataclasses.dataclass(frozen=True)
class Layout:
    """A message: its fields in wire order, and how its errors name them (`request image-gpa`, `secret/gpa`)."""

    node: str
    fields: tuple[Field, ...]
    separator: str = " "
    unknown: Literal["refuse", "skip"] = "skip"
    free_text: str | None = None  # the one key whose value may hold spaces; it is the last field

    def __post_init__(self) -> None:
        keys = [f.key for f in self.fields]
        if len(set(keys)) != len(keys):
            raise ValueError(f"{self.node}: a key is given twice in {keys}")
        if self.free_text is not None and keys[-1] != self.free_text:
            raise ValueError(f"{self.node}: the free-text key {self.free_text} must come last")

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(f.key for f in self.fields)

    def name(self, key: str) -> str:
        return f"{self.node}{self.separator}{key}"

    def decode(self, texts: Mapping[str, str]) -> dict[str, Any]:
        """`texts` (key -> text) as the attributes' values; the first bad one is refused, in wire order."""
        if self.unknown == "refuse":
            unknown = set(texts) - set(self.keys)
            if unknown:
                raise InputError(f"{self.node}: unknown key(s) {', '.join(sorted(k[:32] for k in unknown))}")
        values: dict[str, Any] = {}
        for f in self.fields:
            if f.key in texts:
                values[f.attr] = f.codec.parse(self.name(f.key), texts[f.key])
            elif f.required:
                raise InputError(f"{self.name(f.key)}: missing")
            else:
                values[f.attr] = f.default
        return values

    def encode(self, message: object) -> dict[str, str]:
        """The message's values as text, keyed and ordered as on the wire; None and () are left out."""
        texts: dict[str, str] = {}
        for f in self.fields:
            value = getattr(message, f.attr)
            if value is None or value == ():
                continue
            text = f.codec.format(value)
            if not text:
                raise ValueError(f"{self.name(f.key)}: empty")
            texts[f.key] = text
        return texts

    def check(self, cls: type[Any]) -> None:
        """That every field names an attribute of `cls` (run once, where the message is defined)."""
        attrs = {f.name for f in dataclasses.fields(cls)}
        missing = [f.attr for f in self.fields if f.attr not in attrs]
        if missing:
            raise TypeError(f"{cls.__name__} has no attribute(s) {missing} that its {self.node} layout names")


def request_generation(text: str) -> int | None:
    """The generation of a request node, found even in one refused for another reason (so sevd can ack it)."""
    match = _GENERATION.search(text)
    if match is None or not 1 <= _number(match.group(1)) <= 2**63:  # as the request's codec reads it
        return None
    return _number(match.group(1))


# -- the messages ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LaunchRequest:
    """The `request` node: what the toolstack asks for one domain.

    `parse`/`parse_text` are the only ways in, so every field is valid.  The node is written whole in
    one write, which submits it; a new request is the node rewritten with a higher generation.
    `name` (optional) is the domain's name as the toolstack gave it; sevd shows it in the summary.

        v=1 generation=1 name=web1 policy=0x00000001 es=0 attest=1 image-gpa=0xffe00000 image-size=2097152 godh=…
    """

    domid: DomId
    generation: int
    policy: Policy
    es: bool
    attest: bool
    image_gpa: Gpa
    image_size: int
    godh: bytes | None = None
    session: bytes | None = None
    name: str | None = None
    # Further (gpa, size) pieces of the image, measured in order after the first: a PVH guest's
    # ramdisk lies past a start-info page the toolstack puts between it and the kernel.
    image_more: tuple[tuple[Gpa, int], ...] = ()

    @property
    def image_ranges(self) -> tuple[tuple[Gpa, int], ...]:
        return ((self.image_gpa, self.image_size), *self.image_more)

    @classmethod
    def parse_text(cls, domid: DomId, text: str) -> LaunchRequest:
        return cls.parse(domid, parse_pairs(REQUEST.node, text))

    @classmethod
    def parse(cls, domid: DomId, fields: Mapping[str, str]) -> LaunchRequest:
        """`fields` maps the request's keys to their values; errors name the key and the problem."""
        request = cls(domid=domid, **REQUEST.decode(fields))
        if request.es != request.policy.is_es():
            raise InputError("request es: must equal the policy's ES bit")
        if (request.godh is None) != (request.session is None):
            raise InputError(f"request {'godh' if request.godh is None else 'session'}: missing (give both or neither)")
        ranges = sorted(request.image_ranges)
        if sum(size for _, size in ranges) > MAX_IMAGE:
            raise InputError(f"request image-more: the image's pieces add up to more than {MAX_IMAGE} bytes")
        for (gpa, size), (next_gpa, _) in zip(ranges, ranges[1:], strict=False):
            if gpa + size > next_gpa:
                raise InputError(f"request image-more: the piece at {next_gpa:#x} overlaps the one at {gpa:#x}")
        return request

    def to_fields(self) -> dict[str, str]:
        return REQUEST.encode(self)

    def format(self) -> str:
        """The toolstack's side: the `request` node's value."""
        return format_pairs(self.to_fields())


REQUEST = Layout(
    "request",
    (
        Field("generation", "generation", integer(1, 2**63), required=True),
        Field("name", "name", NAME),
        Field("policy", "policy", POLICY, required=True),
        Field("es", "es", FLAG, default=False),
        Field("attest", "attest", FLAG, default=False),
        Field(
            "image-gpa",
            "image_gpa",
            integer(0, PHYS_ADDR_LIMIT, hex_out=True, align=PAGE_SIZE, what="page"),
            required=True,
        ),
        Field("image-size", "image_size", integer(1, MAX_IMAGE), required=True),
        Field("image-more", "image_more", IMAGE_PIECES, default=()),
        Field("godh", "godh", blob(CERT_SIZE)),
        Field("session", "session", blob(SESSION_SIZE)),
    ),
    unknown="refuse",
)
REQUEST.check(LaunchRequest)


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
    handle: Handle | None = None
    asid: Asid | None = None
    api: str | None = None
    build: int | None = None
    policy: Policy | None = None
    measurement: str | None = None  # base64 of measure(32) || mnonce(16), as LAUNCH_MEASURE returns them
    error: str | None = None

    @classmethod
    def parse(cls, text: str) -> GuestSummary:
        """Refuses malformed content with InputError naming the key; keys it does not know are skipped."""
        return cls(**SUMMARY.decode(parse_pairs(SUMMARY.node, text, last=SUMMARY.free_text)))

    def to_fields(self) -> dict[str, str]:
        """The values as text, keyed as in the node (what the read verbs show); absent ones left out."""
        return SUMMARY.encode(self)

    def format(self) -> str:
        return format_pairs(self.to_fields())


SUMMARY = Layout(
    "summary",
    (
        Field("ack", "ack", integer(1, 2**63)),
        Field("name", "name", NAME),
        Field("state", "state", enum_codec(GuestState)),
        Field("step", "step", STEP),
        Field("handle", "handle", integer(0, HANDLE_MAX)),
        Field("asid", "asid", integer(0, 0xFFFFFFFF)),
        Field("api", "api", pattern(_API, "MAJOR.MINOR")),
        Field("build", "build", integer(0, 0xFF)),
        Field("policy", "policy", POLICY),
        Field("measurement", "measurement", checked_text(blob(MEASUREMENT_SIZE))),
        Field("error", "error", TEXT),
    ),
    free_text="error",
)
SUMMARY.check(GuestSummary)


# The ciphertext's bytes per node: 2048 are 2732 characters of base64, well within xenstore's 4096-byte payload
# (XENSTORE_PAYLOAD_MAX, which holds the path too), so a secret of SECRET_MAX_LEN travels in 10 nodes.
SECRET_PIECE = 2048


@dataclasses.dataclass(frozen=True)
class SecretPacket:
    """The nodes `secret/{header,data,gpa}`: the owner's packet for LAUNCH_SECRET, written in one transaction."""

    header: bytes
    data: bytes
    gpa: Gpa

    @classmethod
    def parse(cls, nodes: Mapping[str, str]) -> SecretPacket:
        """The packet from its nodes, the ciphertext joined again from `data`, `data-1`, ... (SECRET_PIECE each)."""
        more = [key for key in nodes if key.startswith("data-")]
        if not more:
            return cls(**SECRET.decode(nodes))
        keys = ["data", *(f"data-{i}" for i in range(1, len(more) + 1))]
        pieces = []
        for key in keys:
            if key not in nodes:
                raise InputError(f"{SECRET.name(key)}: missing (the ciphertext's pieces are {', '.join(keys)})")
            piece = _b64(SECRET.name(key), nodes[key], max_size=SECRET_PIECE)
            if key != keys[-1] and len(piece) != SECRET_PIECE:
                raise InputError(f"{SECRET.name(key)}: must decode to {SECRET_PIECE} bytes (all but the last)")
            pieces.append(piece)
        joined = {key: value for key, value in nodes.items() if key not in keys}
        joined["data"] = base64.b64encode(b"".join(pieces)).decode()
        return cls(**SECRET.decode(joined))

    def to_nodes(self) -> dict[str, str]:
        """The nodes under `secret/`: a ciphertext longer than SECRET_PIECE goes in pieces, `data` then `data-1`, ...
        (one node's value must fit in xenstore's 4096-byte payload)."""
        nodes = SECRET.encode(dataclasses.replace(self, data=self.data[:SECRET_PIECE]))
        for i in range(1, -(-len(self.data) // SECRET_PIECE)):
            nodes[f"data-{i}"] = base64.b64encode(self.data[i * SECRET_PIECE : (i + 1) * SECRET_PIECE]).decode()
        return nodes


SECRET = Layout(
    "secret",
    (
        Field("header", "header", blob(PACKET_HEADER_SIZE), required=True),
        Field("data", "data", blob(max_size=SECRET_MAX_LEN, multiple=16), required=True),
        Field("gpa", "gpa", integer(0, PHYS_ADDR_LIMIT, hex_out=True, align=16, what="16-byte"), required=True),
    ),
    separator="/",
)
SECRET.check(SecretPacket)


@dataclasses.dataclass(frozen=True)
class PlatformNodes:
    """The nodes `/sevd/platform/{api,build,state,owner,es,guests}`: PLATFORM_STATUS as sevd last read it."""

    api: str  # MAJOR.MINOR
    build: int
    state: PspPlatformState
    owner: bool
    es: bool
    guests: int

    @classmethod
    def parse(cls, nodes: Mapping[str, str]) -> PlatformNodes:
        return cls(**PLATFORM_NODES.decode(nodes))

    def to_nodes(self) -> dict[str, str]:
        return PLATFORM_NODES.encode(self)


PLATFORM_NODES = Layout(
    "platform",
    (
        Field("api", "api", pattern(_API, "MAJOR.MINOR"), required=True),
        Field("build", "build", integer(0, 0xFF), required=True),
        Field("state", "state", enum_codec(PspPlatformState, by="name"), required=True),
        Field("owner", "owner", FLAG, required=True),
        Field("es", "es", FLAG, required=True),
        Field("guests", "guests", integer(0, 0xFFFFFFFF), required=True),
    ),
    separator="/",
)
PLATFORM_NODES.check(PlatformNodes)


COMMAND = enum_codec(Command)


def parse_command(text: str) -> Command:
    return COMMAND.parse("command", text)


def error_text(name: str, message: str) -> str:
    """The summary's `error`: the spec name (or INVALID_REQUEST / XEN_ERROR) first, so scripts can split on ':'.

    One line of printable ASCII (xenstore values are text; the summary ends with it), at most ERROR_MAX characters.
    """
    text = f"{name}: {message}".encode("ascii", "backslashreplace").decode()
    return "".join(c if c.isprintable() else " " for c in text)[:ERROR_MAX]
