"""memlock-guard check: one line per domain, exit 1 if any is short (scripts, monitoring)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from .common import add_judgement_options
from .libvirt_common import add_connect_options, add_selection

HELP = "one line per domain (requirement, limit, headroom, verdict); exit 1 if any is short"
DESCRIPTION = """\
Judges the persistent definition of each named domain (or of every domain with --all;
a transient one by its live XML) with the host policy and the domain's own <metadata>
override, and prints one line each: name, accounting mode, what VFIO will pin, the
limit QEMU will get, the headroom and the verdict. Nothing is changed. A short OpenStack
Nova instance is pointed at its flavor and image ('explain' lists the changes), since
Nova redefines it at every start.

Below the table, a warning for each domain whose hard_limit leaves no room for one more
VFIO device behind its vIOMMU, or for memory hot-added up to maxMemory: libvirt does
not grow a hard_limit at hotplug, so such hotplugs must go through 'memlock-guard
attach-device'. Warnings do not change the exit status; in JSON each domain has a
"warnings" list (kind, needed_bytes, limit_bytes, message).

examples:
  memlock-guard check --all
  memlock-guard check vm1 vm2 --mode strict
  memlock-guard check --all --format json | jq '.[] | select(.verdict == "short")'
  memlock-guard check --all -q || memlock-guard apply --all

exit status: 0 every domain fits (or is unlimited), 1 at least one is short,
2 a domain could not be judged, libvirt is unreachable, or bad input."""


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    uuid: str | None
    data: dict[str, Any]  # the JSON object for this domain
    short: bool
    error: bool


def configure(p: argparse.ArgumentParser) -> None:
    add_selection(p, what="check")
    p.add_argument("--quiet", "-q", action="store_true",
                   help="print nothing; only the exit status tells")
    add_connect_options(p)
    add_judgement_options(p)


def run(args: argparse.Namespace) -> int:
    import json

    from ..libvirtd import client as lc
    from .libvirt_common import load_policy, make_judge, selected, uri

    policy = load_policy(args)  # a broken policy fails before libvirt is contacted
    conn = lc.connect(uri(args))
    try:
        doms = selected(conn, args, persistent_only=False)
        judge = make_judge(args, conn, policy)
        pins = _pins(conn, judge)
        rows = [_row(dom, judge, pins) for dom in doms]
    finally:
        conn.close()
    if not args.quiet:
        if args.format == "json":
            print(json.dumps([r.data for r in rows], indent=2))
        elif not rows:
            print(f"no domains on {uri(args)}")
        else:
            print(_table(rows))
            _print_warnings(rows)
    if any(r.error for r in rows):
        return 2
    return 1 if any(r.short for r in rows) else 0


def _pins(conn: Any, judge: Any) -> Any:
    """iommufd user accounting: what the other running QEMUs of a uid pin (libvirtd/pins.py)."""
    from ..libvirtd.pins import LivePins

    return LivePins(conn, judge)


def _row(dom: Any, judge: Any, pins: Any) -> Row:
    from ..libvirtd import client as lc
    from ..support.errors import MemlockGuardError

    name, uuid = dom.name(), dom.UUIDString()
    try:
        persistent = lc.is_persistent(dom)
        xml = lc.persistent_xml(dom) if persistent else lc.live_xml(dom)
        report, _policy = judge(xml)
        report = pins.judge(xml, report)
    except lc.LibvirtUnreachable:
        raise  # the whole run is over; one line, exit 2
    except MemlockGuardError as e:
        return Row(name, uuid, {"domain": name, "uuid": uuid, "verdict": "error",
                                "error": str(e)}, short=False, error=True)
    from ..accounting.remedy import platform_of

    v = report.verdict
    data = {
        "domain": name, "uuid": uuid, "platform": platform_of(report),
        "definition": "persistent" if persistent else "live",
        "mode": v.mode.value,
        "required_bytes": v.required,
        "limit_bytes": v.limit.bytes,
        "limit_source": v.limit.source,
        "headroom_bytes": v.headroom,
        "verdict": v.fit.value,
        "recommended_hard_limit_bytes": v.recommended_hard_limit,
        **_hotplug_fields(report),
    }
    return Row(name, uuid, data, short=v.fit.value == "short", error=False)


def _hotplug_fields(report: Any) -> dict[str, Any]:
    """Where the hard_limit blocks libvirt's growth at hotplug (accounting/hotplug.py)."""
    from ..accounting import hotplug

    return {"warnings": hotplug.to_dicts(hotplug.warnings(report))}


def _print_warnings(rows: list[Row]) -> None:
    for r in rows:
        for w in r.data.get("warnings", ()):
            print(f"warning: {w['message']}")


def _table(rows: list[Row]) -> str:
    from ..support.units import human

    cells = [("DOMAIN", "MODE", "REQUIRED", "LIMIT", "HEADROOM", "VERDICT")]
    for r in rows:
        d = r.data
        if r.error:
            cells.append((r.name, "-", "-", "-", "-", f"error: {d['error']}"))
            continue
        verdict = d["verdict"]
        if verdict == "short" and d["platform"] == "nova":
            verdict = (f"SHORT: a Nova instance: change its flavor or image "
                       f"(memlock-guard explain {r.name})")
        elif verdict == "short":
            verdict = (f"SHORT: set hard_limit >= "
                       f"{human(d['recommended_hard_limit_bytes'])} (memlock-guard apply)")
        limit = human(d["limit_bytes"])
        if d["limit_source"] not in ("hard_limit",):
            limit += f" ({d['limit_source']})"
        headroom = "-" if d["headroom_bytes"] is None else human(d["headroom_bytes"])
        cells.append((r.name, d["mode"], human(d["required_bytes"]), limit, headroom,
                      verdict))
    widths = [max(len(c[i]) for c in cells) for i in range(5)]
    right = {2, 3, 4}
    out = []
    for c in cells:
        parts = [c[i].rjust(widths[i]) if i in right else c[i].ljust(widths[i])
                 for i in range(5)]
        out.append("  ".join(parts) + "  " + c[5])
    return "\n".join(out)
