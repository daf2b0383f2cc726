"""Domains as `xl-sev` names them: xenstore connections, names and domids, the SEV guests sevd knows.

Names come from /local/domain/<domid>/name, as xl keeps them; the SEV guests are those under
/sevd/guest (sevd.xen.protocol).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from sevd.abi.policy import Policy
from sevd.abi.units import DomId
from sevd.config import Config
from sevd.errors import InputError
from sevd.toolstack.guestnodes import parse_summary, read_guest
from sevd.xen import protocol as proto
from sevd.xen.xsclient import Xenstore


def connect(config: Config) -> Xenstore:
    return Xenstore(config.xenstore_socket)


@contextlib.contextmanager
def xenstore(config: Config) -> Iterator[Xenstore]:
    """A connection for one command, closed when it is done."""
    xs = connect(config)
    try:
        yield xs
    finally:
        xs.close()


def domain_names(xs: Xenstore) -> list[str]:
    """The domids of the SEV guests and the names of those that have one (for shell completion)."""
    out = []
    for d in xs.list(proto.GUESTS):
        name = xs.read(f"/local/domain/{d}/name")
        out += [d] + ([name] if name else [])
    return out


def resolve_domain(xs: Xenstore, dom: str) -> tuple[DomId, str]:
    """(domid, name) for a name or a domid; names come from /local/domain/<domid>/name, as xl keeps them."""
    if dom.isdigit():
        domid = DomId(int(dom))
        name = xs.read(f"/local/domain/{domid}/name")
        if name is None and xs.read(proto.guest_path(domid)) is None:
            raise InputError(f"domain {dom}: no such domain")
        return domid, name or ""
    for d in xs.list("/local/domain"):
        if d.isdigit() and xs.read(f"/local/domain/{d}/name") == dom:
            return DomId(int(d)), dom
    raise InputError(f"domain {dom!r}: no domain of that name (xl-sev list shows the SEV guests)")


def sev_guest(xs: Xenstore, dom: str) -> tuple[DomId, str, dict[str, str]]:
    """(domid, name, read_guest's view) of an SEV guest; InputError for a domain sevd has no request for."""
    domid, name = resolve_domain(xs, dom)
    nodes = read_guest(xs, domid)
    if not nodes:
        raise InputError(f"domain {dom!r} (domid {domid}) is not an SEV guest: sevd has no request for it")
    return domid, name, nodes


def is_sev_guest(xs: Xenstore, domid: DomId) -> bool:
    return xs.read(proto.guest_path(domid)) is not None


def guest_rows(xs: Xenstore, *, long: bool = False) -> list[dict[str, Any]]:
    """What `list` shows: one summary per guest, all read in one pipelined batch.  A guest sevd has not
    taken yet has no summary: its request (read in a second batch) gives the name and policy; xl's
    name node is read only for a guest named by neither.  Keys starting with `_` are not for --json.
    `long` adds the firmware API and build, the launch step, the measurement and the last error."""
    domids = sorted(DomId(int(x)) for x in xs.list(proto.GUESTS) if x.isdigit())
    texts = xs.read_many([proto.guest_path(d, "summary") for d in domids])
    summaries = {d: parse_summary(d, text) or proto.GuestSummary() for d, text in zip(domids, texts, strict=True)}
    names: dict[DomId, str | None] = {d: s.name for d, s in summaries.items() if s.name is not None}
    policies: dict[DomId, str | None] = {d: str(s.policy) for d, s in summaries.items() if s.policy is not None}
    untaken = [d for d in domids if d not in names or d not in policies]
    for domid, request in zip(untaken, xs.read_many([proto.guest_path(d, "request") for d in untaken]), strict=True):
        with contextlib.suppress(InputError):  # shown as the toolstack wrote it; sevd judges it
            fields = proto.parse_pairs("request", request) if request is not None else {}
            names.setdefault(domid, fields.get("name"))
            policies.setdefault(domid, fields.get("policy"))
    unnamed = [d for d in domids if names.get(d) is None]
    names |= dict(zip(unnamed, xs.read_many([f"/local/domain/{d}/name" for d in unnamed]), strict=True))
    return [
        {
            "domid": domid,
            "name": names.get(domid) or "",
            "handle": summary.handle,
            "asid": summary.asid,
            "state": summary.state.value if summary.state else "requested",
            "policy": policies.get(domid),
            "_measured": summary.measurement is not None,
            **(
                {
                    "api": summary.api,
                    "build": summary.build,
                    "step": summary.step,
                    "measurement": summary.measurement,
                    "error": summary.error,
                }
                if long
                else {}
            ),
        }
        for domid, summary in summaries.items()
    ]


# -- the `list` table ------------------------------------------------------------------------------------------


def _dash(value: int | None) -> str:
    return "-" if value is None else str(value)


def _policy_text(text: str | None) -> str:
    try:
        pol = Policy.parse(text) if text else None
    except InputError:
        pol = None
    return f"{pol} {pol.describe()}" if pol else (text or "-")


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    """Columns as wide as their widest cell (a long name never shifts the others); the last is left ragged."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        out = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        out[-1] = cells[-1]
        return "  ".join(out)

    return [fmt(header), *(fmt(r) for r in rows)]


def list_lines(rows: list[dict[str, Any]], *, long: bool = False) -> list[str]:
    """`xl-sev list`'s text: one row per guest; with `long`, each guest's API, build, step, measurement, error."""
    header = ["Name", "ID", "Handle", "ASID", "State", "Measured", "Policy"]
    cells = [
        [r["name"] or "-", str(r["domid"]), _dash(r["handle"]), _dash(r["asid"]), r["state"],
         "yes" if r["_measured"] else "no", _policy_text(r["policy"])]
        for r in rows
    ]  # fmt: skip
    lines = _table(header, cells, right={1, 2, 3})
    if long:
        for r in rows:
            lines.append(f"{r['name'] or r['domid']}:")
            for key in ("api", "build", "step", "measurement", "error"):
                lines.append(f"  {key:<12}{'-' if r[key] is None else r[key]}")
    return lines
