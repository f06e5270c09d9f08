"""memlock-guard explain: the estimate report for a domain libvirt knows, baselines side by side."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from .common import add_judgement_options
from .libvirt_common import add_connect_options

if TYPE_CHECKING:
    from ..accounting.report import Report
    from ..libvirtd.apply import Provenance

HELP = "explain the locked-memory verdict of a defined domain, baselines side by side"
DESCRIPTION = """\
Reads a domain from libvirt (its persistent definition, which the next start uses;
--live for the XML of the running VM) and prints the same itemised report as
'estimate', judged with the host policy and the domain's own <metadata> override.

Below the report, the limits QEMU would get under each rule, side by side against the
requirement: this definition as it stands, libvirt's formula without a hard_limit
(for the daemon's libvirt and for the newest rules), KubeVirt's (the libvirt inside a
virt-launcher pod under virt-handler's limit), and the recommended hard_limit. If
memlock-guard set the hard_limit, it says so, and whether devices changed since.

When the domain is short and is an OpenStack Nova instance (<metadata><nova:instance>),
or with --platform kubevirt, the report ends with the remedies in that platform's terms:
flavor and image properties for Nova (which redefines the domain at every start and hard
reboot), KubeVirt settings with their numbers for KubeVirt.

A "warning" line (JSON: report.warnings) says when the hard_limit leaves no room for
one more VFIO device behind the vIOMMU, or for memory up to maxMemory: such hotplugs
must go through 'memlock-guard attach-device'.

--measured (a running domain, on this host, as root; implies --live) puts the ledger
side by side with the running QEMU, item by item: the bytes of each item's mapping
mapped now (boot-time items, such as ROM BARs, usually are not), and its pages from
/proc/PID/pagemap: written for a ROM's file part, zero-fill for its never-written tail,
populated for read-write memory. Then the zero-fill table of `measure --zero-pages`.
Nothing is started or stopped, and guest memory is not read.

examples:
  memlock-guard explain vm1
  memlock-guard explain vm1 --live --mode strict
  memlock-guard explain vm1 --measured
  memlock-guard explain vm1 --format json | jq .report.verdict

exit status: 0 explained (whatever the verdict), 2 unknown domain, libvirt unreachable,
--measured on a domain that is not running, or bad input."""


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain", metavar="DOMAIN", help="domain name, UUID or id")
    p.add_argument("--live", action="store_true",
                   help="explain the running VM's XML instead of the persistent definition")
    p.add_argument("--measured", action="store_true",
                   help="a running domain: each item next to what its QEMU maps now and "
                        "the state of its pages (as root; implies --live)")
    add_connect_options(p)
    add_judgement_options(p)


def run(args: argparse.Namespace) -> int:
    import json

    from ..libvirtd import apply as applymod
    from ..libvirtd import client as lc
    from ..support.errors import InputError
    from . import render
    from .libvirt_common import make_judge, uri

    conn = lc.connect(uri(args))
    live = args.live or args.measured
    try:
        dom = lc.lookup(conn, args.domain)
        name = str(dom.name())
        if live:
            if not lc.is_active(dom):
                drop = "--measured" if args.measured else "--live"
                raise InputError(f"domain {name!r} is not running; drop {drop} to "
                                 f"explain its persistent definition")
            xml = lc.live_xml(dom)
        elif lc.is_persistent(dom):
            xml = lc.persistent_xml(dom)
        else:
            xml = lc.live_xml(dom)  # a transient domain has only its live definition
        judge = make_judge(args, conn)
        report, _policy = judge(xml)
    finally:
        conn.close()
    prov = applymod.provenance_of(xml)
    rows = side_by_side(report)
    which = "live" if live else "persistent"
    measured = _measure(name, uri(args), report) if args.measured else None
    if args.format == "json":
        # The estimate report stays whole (schemas/estimate.schema.json is closed);
        # explain's additions sit beside it.
        doc = {"definition": which, "report": render.to_dict(report),
               "side_by_side": rows, "applied": _prov_dict(prov, report)}
        if measured is not None:
            doc["measured"] = measured[0]
        print(json.dumps(doc, indent=2))
        return 0
    print(render.to_text(report))
    print()
    print(_table(report, rows))
    line = _prov_line(prov, report)
    if line:
        print(line)
    if measured is not None:
        print()
        print("\n".join(measured[1]))
    return 0


def _measure(name: str, uri: str | None, r: Report) -> tuple[dict[str, Any], list[str]]:
    """The running QEMU next to the ledger: (JSON, text lines)."""
    from ..measure.compare import item_rows, mapped_now, zero_fill
    from ..measure.pages import PageProbe
    from ..measure.target import open_target
    from ..support.units import human
    from .measured import items_dict, items_lines, zero_fill_dict, zero_fill_lines

    got = PageProbe().done(open_target(name, uri))
    assert got.now is not None
    mapped, stray = mapped_now(got.now, got.devices)
    rows = item_rows(r.ledger.items, mapped, got.now.guest_ram_bytes, got)
    zf = zero_fill(got, r.ledger.items)
    doc = {"items": items_dict(rows), "guest_ram_mapped_bytes": got.now.guest_ram_bytes,
           "unattributed": [{"what": f"{m.region} @{m.start:#x} ({m.type})", "bytes": m.size}
                            for m in stray], **zero_fill_dict(zf)}
    lines = ["measured: the running QEMU, item by item (MAPPED NOW: its mapping's bytes in "
             "the guest address space; PAGES: /proc/PID/pagemap)"]
    lines += items_lines(rows)
    lines += [f"  mapped now, no ledger item: {m.region} @{m.start:#x} ({m.type}) "
              f"{human(m.size)}" for m in stray]
    return doc, [*lines, "", *zero_fill_lines(zf)]


def side_by_side(r: Report) -> list[dict[str, Any]]:
    """Each rule's limit for this domain, and whether the requirement fits under it."""
    from ..accounting.report import effective_limit
    from ..baselines.kubevirt import parse_version
    from ..baselines.libvirt import LATEST, libvirt_limit
    from ..domain import Memtune

    need = r.verdict.required
    bare = r.domain._replace(memtune=Memtune())
    rows: list[dict[str, Any]] = []

    def row(rule: str, limit: int | None, source: str, demand: int | None = None) -> None:
        headroom = None if limit is None else limit - max(need, demand or 0)
        verdict = ("unlimited" if limit is None else "not set" if limit == 0
                   else "fits" if headroom is not None and headroom >= 0 else "short")
        rows.append({"rule": rule, "bytes": limit, "source": source, "verdict": verdict,
                     "headroom_bytes": None if verdict == "not set" else headroom,
                     "demand_bytes": demand})

    v = r.verdict
    row("this definition", v.limit.bytes, v.limit.source, v.limit.demand)
    versions = [r.libvirt.version] + ([LATEST] if r.libvirt.version != LATEST else [])
    for ver in versions:
        lv = libvirt_limit(bare, ver, nvlink2_bridges=r.host.nvlink2_bridges,
                           iommu_groups=r.host.iommu_group_map)
        label = ".".join(map(str, ver))
        if ver == LATEST and ver != r.libvirt.version:
            label += " (newest rules)"
        got = effective_limit(lv, r.kubevirt, r.host, "libvirt")
        row(f"libvirt {label}, no hard_limit", got.bytes, got.source)
    kv = r.kubevirt
    # In a virt-launcher pod: the pod's own libvirt, under virt-handler's limit.
    pod = libvirt_limit(bare, parse_version(kv.version).launcher_libvirt,
                        nvlink2_bridges=r.host.nvlink2_bridges,
                        iommu_groups=r.host.iommu_group_map)
    if kv.bytes is None and not kv.unlimited and not pod.bytes:
        row(f"KubeVirt {kv.version}", 0, "kubevirt")  # neither sets a limit
    else:
        got = effective_limit(pod, kv, r.host, "kubevirt")
        row(f"KubeVirt {kv.version}", got.bytes, "kubevirt", got.demand)
    row("recommended hard_limit", v.recommended_hard_limit, "memlock-guard")
    return rows


def _table(r: Report, rows: list[dict[str, Any]]) -> str:
    from ..support.units import human

    v = r.verdict
    lines = [f"side by side: QEMU's memlock limit under each rule, against the "
             f"{human(v.required)} this domain needs ({v.mode.value})"]
    cells = [("RULE", "LIMIT", "VERDICT")]
    for x in rows:
        if x["verdict"] in ("fits", "short"):
            hr = x["headroom_bytes"]
            verdict = (f"fits, headroom {human(hr)}" if x["verdict"] == "fits"
                       else f"SHORT by {human(-hr)}")
            if x["demand_bytes"] is not None and x["demand_bytes"] > x["bytes"]:
                verdict += (f" (QEMU cannot start: libvirt in the pod asks for "
                            f"{human(x['demand_bytes'])})")
        else:
            verdict = x["verdict"]
        limit = "unlimited" if x["bytes"] is None else human(x["bytes"])
        cells.append((f"{x['rule']} ({x['source']})", limit, verdict))
    w0 = max(len(c[0]) for c in cells)
    w1 = max(len(c[1]) for c in cells)
    lines += [f"  {a.ljust(w0)}  {b.rjust(w1)}  {c}" for a, b, c in cells]
    return "\n".join(lines)


def _prov_dict(prov: Provenance | None, r: Report) -> dict[str, Any] | None:
    from ..libvirtd.apply import ledger_digest

    if prov is None:
        return None
    return {"value_bytes": prov.value_bytes, "mode": prov.mode, "version": prov.version,
            "ledger_digest": prov.ledger_digest,
            "in_place": prov.value_bytes == r.domain.memtune.hard_limit,
            "ledger_changed": prov.ledger_digest != ledger_digest(r.ledger)}


def _prov_line(prov: Provenance | None, r: Report) -> str | None:
    from ..support.units import human

    d = _prov_dict(prov, r)
    if d is None or prov is None:
        return None
    if not d["in_place"]:
        return (f"applied: memlock-guard {prov.version} once set hard_limit "
                f"{human(prov.value_bytes)}, but the definition now has another value "
                f"(changed by hand since)")
    changed = ("devices changed since" if d["ledger_changed"]
               else "devices unchanged since")
    return (f"applied: hard_limit {human(prov.value_bytes)} was set by memlock-guard "
            f"{prov.version} ({prov.mode}); {changed}")
