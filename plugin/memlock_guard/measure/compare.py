"""The estimate next to the measurement: the ledger's non-RAM peak and the tolerance it
is held to, and the ledger's zero-fill items next to the pages QEMU never wrote."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..accounting.ledger import VGA_WINDOW, Backing, Kind, Ledger, LedgerItem
from ..accounting.modes import Mode
from ..support.units import MiB
from .locate import LEGACY_WINDOW
from .mappings import Mapping, Snapshot
from .pagemap import PAGE
from .pages import PageFacts, PageMeasurement, RegionPages
from .pci import PciDevice, bar_holding, block_device_path


def tolerance(measured: int) -> int:
    """How far above the measurement the estimate may be: max(2 MiB, 1 %)."""
    return max(2 * MiB, measured // 100)


def estimated_non_ram(ledger: Ledger) -> tuple[int, int]:
    """(peak, always-mapped) non-RAM bytes of the ledger, as one container maps them.

    The strict requirement minus the RAM items, per container: the ledger's own peak
    over boot windows, so the same arithmetic the verdict uses is what gets checked.
    """
    items = tuple(i._replace(containers=1) for i in ledger.items if i.kind is not Kind.RAM)
    one = Ledger(items, 1, ledger.container_reasons)
    always = sum(i.bytes for i in items if i.window is None)
    return one.required(Mode.STRICT), always


# -- zero-fill: the ledger's never-written pages next to the pages QEMU never wrote -------


@dataclass(frozen=True, slots=True)
class ZeroFillRow:
    """One read-only region: its measured pages next to the ledger's items for it."""

    region: str | None  # the RAM block; None for a ledger mapping QEMU has no block for
    mapping: str | None  # the join key (accounting/ledger.py)
    bytes: int
    written: int | None  # bytes; None when not measured
    zero_fill: int | None  # never populated, or the shared zero page
    zero_page: int | None  # of which the zero page
    unknown: int | None  # present pages whose PFN was hidden (no CAP_SYS_ADMIN)
    estimated_zero_fill: int | None  # None: no ledger item for this region
    estimated_bytes: int | None  # all the ledger's items for it (file part, tail ...)
    ledger_items: tuple[str, ...]
    source: str | None  # how the host address was found
    page_map: str | None
    unresolved: str | None

    @property
    def difference(self) -> int | None:
        if self.zero_fill is None or self.estimated_zero_fill is None:
            return None
        return self.zero_fill - self.estimated_zero_fill

    @property
    def agrees(self) -> bool | None:
        """Within one page; None when the comparison cannot be made."""
        if self.difference is None or self.unknown:
            return None
        return abs(self.difference) <= PAGE

    @property
    def forgives_written(self) -> bool:
        """The ledger calls more of it zero-fill than could be: tolerant accounting would
        forgive pages that are real (unknown pages get the benefit of the doubt)."""
        if self.zero_fill is None or self.estimated_zero_fill is None:
            return False
        return self.estimated_zero_fill > self.zero_fill + (self.unknown or 0) + PAGE


@dataclass(frozen=True, slots=True)
class ZeroFill:
    rows: tuple[ZeroFillRow, ...]
    read_write: tuple[RegionPages, ...]
    facts: PageFacts
    notes: tuple[str, ...]

    def totals(self) -> dict[str, int]:
        done = [r for r in self.rows if r.written is not None]

        def add(values: list[int | None]) -> int:
            return sum(v or 0 for v in values)

        return {"bytes": sum(r.bytes for r in done),
                "written_bytes": add([r.written for r in done]),
                "zero_fill_bytes": add([r.zero_fill for r in done]),
                "zero_page_bytes": add([r.zero_page for r in done]),
                "unknown_bytes": add([r.unknown for r in done]),
                "estimated_zero_fill_bytes": add([r.estimated_zero_fill for r in done]),
                "regions": len(self.rows), "unresolved": len(self.rows) - len(done)}


def zero_fill(measured: PageMeasurement, items: Iterable[LedgerItem]) -> ZeroFill:
    """Join the read-only regions QEMU has with the ledger's read-only items, by mapping.

    Both ways: a region with no item says so (estimated None), and a read-only item
    whose mapping QEMU has no block for gets a row of its own.
    """
    ledger: dict[str, list[LedgerItem]] = {}
    for i in items:
        if i.readonly and i.mapping:
            ledger.setdefault(i.mapping, []).append(i)
    rows: list[ZeroFillRow] = []
    joined: set[str] = set()
    for r in measured.regions:
        if not r.readonly:
            continue
        mine = [i for key in r.mappings for i in ledger.get(key, [])]
        joined.update(r.mappings)
        p = r.pages
        rows.append(ZeroFillRow(
            r.region, r.mappings[0] if r.mappings else None, r.bytes,
            None if p is None else p.written * PAGE, None if p is None else p.zero_fill * PAGE,
            None if p is None else p.zero_page * PAGE, None if p is None else p.unknown * PAGE,
            sum(i.bytes for i in mine if i.backing is Backing.ZERO_FILL) if mine else None,
            sum(i.bytes for i in mine) if mine else None,
            tuple(i.source for i in mine), r.source, None if p is None else p.map,
            r.unresolved))
    for key, mine in ledger.items():
        if key not in joined:
            rows.append(ZeroFillRow(
                None, key, sum(i.bytes for i in mine), None, None, None, None,
                sum(i.bytes for i in mine if i.backing is Backing.ZERO_FILL),
                sum(i.bytes for i in mine), tuple(i.source for i in mine), None, None,
                "QEMU has no RAM block for it"))
    rw = tuple(r for r in measured.regions if not r.readonly)
    return ZeroFill(tuple(rows), rw, measured.facts, measured.notes)


# -- explain --measured: each ledger item next to what QEMU maps now -----------------------


def mapping_of(m: Mapping, snap: Snapshot, devices: Sequence[PciDevice]) -> str | None:
    """The ledger key of a non-RAM range mapped now; None when it is nobody's."""
    if m.region in ("pc.rom", "isa-bios"):
        return m.region
    if m.region == "pc.bios":
        return "isa-bios" if m.start < 1 * MiB else "pc.bios"
    owner = bar_holding(devices, m.start, m.size)
    if owner is not None:
        return f"{owner[0].qemu_id}/bar{owner[1].index}" if owner[0].qemu_id else None
    if m.start in LEGACY_WINDOW:  # whose RAM: the device with the same region in a BAR
        ids = {o[0].qemu_id for x in snap.non_ram if x.region == m.region
               and (o := bar_holding(devices, x.start, x.size)) is not None}
        if len(ids) == 1 and (qemu_id := ids.pop()):
            return f"{qemu_id}/{VGA_WINDOW}"
    return None


def mapped_now(snap: Snapshot, devices: Sequence[PciDevice]) -> tuple[dict[str, int],
                                                                      list[Mapping]]:
    """Non-RAM bytes mapped now per ledger key, and the ranges no key claims."""
    out: dict[str, int] = {}
    stray = []
    for m in snap.non_ram:
        key = mapping_of(m, snap, devices)
        if key is None:
            stray.append(m)
        else:
            out[key] = out.get(key, 0) + m.size
    return out, stray


@dataclass(frozen=True, slots=True)
class ItemRow:
    """A ledger item next to the measurement of its mapping."""

    item: LedgerItem
    mapped_now: int | None  # the mapping's bytes mapped now (shown once per mapping)
    measured: int | None  # pages of its kind: written, zero-fill, or populated
    measured_what: str | None  # "written" | "zero-fill" | "populated"


def item_rows(items: Sequence[LedgerItem], mapped: dict[str, int], guest_ram_bytes: int,
              pages: PageMeasurement | None) -> list[ItemRow]:
    regions = {} if pages is None else {k: r for r in pages.regions for k in r.mappings}
    ram_pages = None if pages is None else sum(
        r.pages.written * PAGE for r in pages.regions
        if not r.readonly and block_device_path(r.region) is None and r.pages is not None)
    out, seen = [], set()
    for i in items:
        first = (i.mapping or f"kind:{i.kind.value}") not in seen
        seen.add(i.mapping or f"kind:{i.kind.value}")
        if i.kind is Kind.RAM:
            out.append(ItemRow(i, guest_ram_bytes if first else None,
                               ram_pages if first else None, "populated" if first else None))
            continue
        if i.mapping is None:
            out.append(ItemRow(i, None, None, None))
            continue
        now = mapped.get(i.mapping, 0) if first else None
        r = regions.get(i.mapping)
        p = None if r is None else r.pages
        if p is None:
            out.append(ItemRow(i, now, None, None))
        elif i.backing is Backing.ZERO_FILL:
            out.append(ItemRow(i, now, p.zero_fill * PAGE, "zero-fill"))
        elif i.backing is Backing.FILE_ROM or i.readonly:
            out.append(ItemRow(i, now, p.written * PAGE, "written"))
        else:
            out.append(ItemRow(i, now, p.written * PAGE if first else None,
                               "populated" if first else None))
    return out
