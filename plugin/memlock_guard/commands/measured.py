"""Rendering of page measurements, shared by ``measure --zero-pages`` and
``explain --measured``: the zero-fill table, the read-write regions, the item table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..support.units import human

if TYPE_CHECKING:
    from ..measure.compare import ItemRow, ZeroFill
    from ..measure.pages import RegionPages

PAGE = 4096


def zero_fill_dict(zf: ZeroFill) -> dict[str, Any]:
    """The keys ``measured`` gains: zero_fill (the issue's list), its totals, the
    read-write regions, the facts that shape pages, and notes."""
    f = zf.facts
    return {
        "zero_fill": [{
            "region": r.region, "mapping": r.mapping, "bytes": r.bytes,
            "written_bytes": r.written, "zero_fill_bytes": r.zero_fill,
            "zero_page_bytes": r.zero_page, "unknown_bytes": r.unknown,
            "estimated_zero_fill_bytes": r.estimated_zero_fill,
            "estimated_bytes": r.estimated_bytes,
            "difference_bytes": r.difference, "agrees": r.agrees,
            "ledger_items": list(r.ledger_items), "hva_source": r.source,
            "page_map": r.page_map, "unresolved": r.unresolved} for r in zf.rows],
        "zero_fill_totals": zf.totals(),
        "read_write": [_rw_dict(r) for r in zf.read_write],
        "page_facts": {"kernel": f.kernel, "transparent_hugepage": f.transparent_hugepage,
                       "ksm_run": f.ksm_run, "ksm_use_zero_pages": f.ksm_use_zero_pages,
                       "pfns_visible": f.pfns_visible},
        "zero_fill_notes": list(zf.notes),
    }


def _rw_dict(r: RegionPages) -> dict[str, Any]:
    p = r.pages
    return {"region": r.region, "mappings": list(r.mappings), "bytes": r.bytes,
            "populated_bytes": None if p is None else p.written * PAGE,
            "zero_page_bytes": None if p is None else p.zero_page * PAGE,
            "unknown_bytes": None if p is None else p.unknown * PAGE,
            "hva_source": r.source, "page_map": None if p is None else p.map,
            "unresolved": r.unresolved}


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [max(len(x[c]) for x in [header, *rows]) for c in range(len(header))]
    out = []
    for row in [header, *rows]:
        cells = [c.rjust(w) if k in right else c.ljust(w)
                 for k, (c, w) in enumerate(zip(row, widths, strict=True))]
        out.append("  " + "  ".join(cells).rstrip())
    return out


def _h(n: int | None) -> str:
    return "-" if n is None else human(n)


def zero_fill_lines(zf: ZeroFill) -> list[str]:
    f = zf.facts
    pfns = {True: "PFNs visible", False: "PFNs hidden (no CAP_SYS_ADMIN): present shared "
            "pages are unknown", None: "no present page"}[f.pfns_visible]
    lines = ["zero-fill of the read-only regions (pagemap: never written, or the shared "
             "zero page), next to the ledger's zero-fill items:"]
    rows = []
    for r in zf.rows:
        if r.unresolved:
            rows.append((r.region or "(none in QEMU)", r.mapping or "-", human(r.bytes),
                         "-", "-", _h(r.estimated_zero_fill), "-", "unresolved", ""))
            continue
        diff = "-" if r.difference is None else ("+" if r.difference > 0 else "") + human(
            r.difference)
        zero = _h(r.zero_fill) + (f" ({human(r.zero_page or 0)} zero page)"
                                  if r.zero_page else "")
        if r.unknown:
            zero += f" +{human(r.unknown)} unknown"
        rows.append((r.region or "", r.mapping or "-", human(r.bytes), _h(r.written), zero,
                     _h(r.estimated_zero_fill), diff, r.source or "", r.page_map or ""))
    lines += _table(("REGION", "MAPPING", "SIZE", "WRITTEN", "ZERO-FILL", "LEDGER", "DIFF",
                     "HVA FROM", "PAGES"), rows, {2, 3, 4, 5, 6})
    t = zf.totals()
    lines.append(f"  total measured: {human(t['bytes'])}, written {human(t['written_bytes'])}, "
                 f"zero-fill {human(t['zero_fill_bytes'])} (ledger "
                 f"{human(t['estimated_zero_fill_bytes'])}); "
                 f"{t['unresolved']} of {t['regions']} unresolved")
    for r in zf.rows:
        if r.unresolved:
            lines.append(f"  unresolved {r.region or r.mapping}: {r.unresolved}")
    if zf.read_write:
        lines.append("read-write regions (pinned with write access, so charged in every "
                     "mode; information only):")
        rw = [(r.region, human(r.bytes),
               "unresolved" if r.pages is None else human(r.pages.written * PAGE),
               r.unresolved or (r.pages.map if r.pages else "")) for r in zf.read_write]
        lines += _table(("REGION", "SIZE", "POPULATED", "PAGES"), rw, {1, 2})
    lines.append(f"pages: kernel {f.kernel}, THP {f.transparent_hugepage or 'unknown'}, "
                 f"KSM {'on' if f.ksm_run == '1' else 'off'}, {pfns}")
    lines += [f"note: {n}" for n in zf.notes]
    return lines


def items_dict(rows: Sequence[ItemRow]) -> list[dict[str, Any]]:
    return [{"source": r.item.source, "mapping": r.item.mapping, "bytes": r.item.bytes,
             "backing": r.item.backing.value,
             "window": r.item.window.value if r.item.window else None,
             "mapped_now_bytes": r.mapped_now, "measured_bytes": r.measured,
             "measured": r.measured_what} for r in rows]


def items_lines(rows: Sequence[ItemRow]) -> list[str]:
    """One line per ledger item; ″ where the item shares the line above's measurement."""
    cells = []
    for k, r in enumerate(rows):
        i = r.item
        prev = rows[k - 1].item if k else None
        shared = prev is not None and (
            (i.mapping is not None and i.mapping == prev.mapping)
            or (i.mapping is None and i.kind.value == "ram" == prev.kind.value))
        if r.mapped_now is not None:
            now = human(r.mapped_now)
            if r.mapped_now == 0 and i.window is not None:
                now = f"0 ({i.window.value} window)"
        else:
            now = "″" if shared else "-"
        if r.measured is not None:
            measured = f"{human(r.measured)} {r.measured_what}"
        else:
            measured = "″" if shared and r.measured_what is None else "-"
        cells.append((i.source, human(i.bytes), i.backing.value, i.mapping or "-", now,
                      measured))
    return _table(("SOURCE", "LEDGER", "BACKING", "MAPPING", "MAPPED NOW", "PAGES"), cells,
                  {1})
