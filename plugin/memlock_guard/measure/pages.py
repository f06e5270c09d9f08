"""Read the pages of every RAM block VFIO would map: which were ever written.

Read-only regions (pc.bios, its isa-bios alias or the pflash isa-bios copy, pc.rom,
ROM BARs, qxl.vrom) are where tolerant accounting forgives pages; read-write ones
(guest RAM, video RAM) are pinned with write access, so their pages are faulted in and
charged in every mode, and their populated share is information only.

``PageProbe`` gathers host addresses (locate.py) while a boot is followed (as
boot.measure_boot's observer: before the first instruction, and at the end, before the
domain is destroyed), or in one look at a running domain, and then reads pagemap
(pagemap.py). Nothing here reads guest memory: no ``xp``, no ``memsave``, no
/proc/PID/mem, which could fault pages in.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..accounting.ledger import MACHINE_MAPPINGS, ROM_BAR, VGA_WINDOW
from ..estimators.firmware import ISA_BIOS_MAX
from ..host import sources as host_sources
from ..support.units import MiB
from . import pagemap, pci
from .locate import Locator
from .mappings import Snapshot, snapshot
from .qemu_text import (
    MeasureError,
    RamBlock,
    guest_ram_regions,
    parse_alloc_trace,
    parse_bar_trace,
    parse_kvm_slots,
    parse_memdevs,
    parse_ramblocks,
)
from .target import Target, qemu_pid

QXL_ROM_BAR = 2  # QXL_ROM_RANGE_INDEX (spice-protocol qxl_dev.h): qxl.vrom
ISA_BIOS_ALIAS = "isa-bios (alias of the pc.bios top)"
MAX_LOG_BYTES = 64 * MiB


@dataclass(frozen=True, slots=True)
class RegionPages:
    """One RAM block (or the isa-bios view of pc.bios) and the state of its pages."""

    region: str  # the RAM block's name, as `info ramblock` prints it
    readonly: bool
    bytes: int
    mappings: tuple[str, ...]  # the ledger keys it is mapped as (accounting/ledger.py)
    hva: int | None = None
    source: str | None = None  # how its host address was found
    pages: pagemap.PageCount | None = None
    unresolved: str | None = None  # why it was not measured


@dataclass(frozen=True, slots=True)
class PageFacts:
    """What decides how pages look, recorded with the measurement."""

    kernel: str
    transparent_hugepage: str | None
    ksm_run: str | None  # 1: ksmd merges identical pages (they then show as KSM pages)
    ksm_use_zero_pages: str | None  # 1: zero-filled pages may be merged into the zero page
    pfns_visible: bool | None  # None: no present page to tell


@dataclass(frozen=True, slots=True)
class PageMeasurement:
    regions: tuple[RegionPages, ...]
    facts: PageFacts
    notes: tuple[str, ...]
    now: Snapshot | None = None  # what was mapped at the end
    devices: tuple[pci.PciDevice, ...] = ()  # info pci at the end


def readonly_block(name: str) -> bool:
    """The RAM blocks QEMU maps read-only and VFIO would pin: the firmware ROMs, and a
    device's option ROM (pci_add_option_rom names it TYPE.rom) or QXL's device ROM.
    fw_cfg blobs ("/rom@etc/...") are never mapped; pflash ("system.flash0") is a ROM
    device, which VFIO skips."""
    if name in ("pc.bios", "pc.rom", "isa-bios"):
        return True
    return pci.block_device_path(name) is not None and name.endswith((".rom", "/qxl.vrom"))


class PageProbe:
    """Host addresses gathered over a boot (or now), then the pages read."""

    trace_events: tuple[str, ...] = ("kvm_set_user_memory",)

    def __init__(self) -> None:
        self.locator: Locator | None = None
        self.boot = False
        self.result: PageMeasurement | None = None

    def _locator(self, target: Target) -> Locator:
        if self.locator is None:
            self.locator = Locator(parse_ramblocks(target.hmp("info ramblock")))
        return self.locator

    def paused(self, target: Target, before: Snapshot) -> None:
        """Before the first instruction: what SeaBIOS unmaps within milliseconds."""
        self.boot = True
        self._locator(target).by_gpa2hva(lambda a: target.hmp(f"gpa2hva {a:#x}"),
                                         before.mappings, (), "before the first instruction")

    def done(self, target: Target, log_text: str = "") -> PageMeasurement:
        """At the end (of a boot: before the domain is destroyed): locate and read."""
        loc = self._locator(target)
        guest_ram = guest_ram_regions(parse_memdevs(target.hmp("info memdev")))
        devices = pci.parse_info_pci(target.hmp("info pci"))
        now = snapshot(target.hmp("info mtree -f"), guest_ram)
        loc.by_gpa2hva(lambda a: target.hmp(f"gpa2hva {a:#x}"), now.mappings, devices, "now")
        slots = parse_kvm_slots(log_text)
        loc.by_kvm_trace(parse_bar_trace(log_text), slots, devices)
        notes: list[str] = []
        try:
            pid = qemu_pid(target)
        except MeasureError as e:
            pid, notes = None, [str(e)]
        ro = [b for b in loc.blocks if readonly_block(b.name)]
        rw = [b for b in loc.blocks if not readonly_block(b.name)
              and (b.name in guest_ram or pci.block_device_path(b.name))]
        vmas: tuple[tuple[int, int], ...] = ()
        if pid is not None:
            loc.by_alloc_trace(parse_alloc_trace(_log(target.log_path), pid))
            try:
                vmas = pagemap.ram_block_vmas(pagemap.read_smaps(pid))
            except pagemap.PagemapError as e:
                notes.append(str(e))
            loc.by_vma_size(vmas, [b.name for b in ro + rw])
        regions = _regions(loc, ro, rw, pci.by_path(devices))
        read = tuple(_read(r, pid, vmas, loc, boot=self.boot, kvm=bool(slots))
                     for r in regions)
        self.result = PageMeasurement(read, _facts(read), tuple(loc.notes + notes), now,
                                      devices)
        return self.result


def _regions(loc: Locator, ro: Sequence[RamBlock], rw: Sequence[RamBlock],
             devices: dict[str, pci.PciDevice]) -> list[RegionPages]:
    out = []
    for b in ro:
        out.append(RegionPages(b.name, True, b.total, _ro_keys(b.name, loc, devices)))
        if b.name == "pc.bios" and not any(x.name == "isa-bios" for x in ro):
            # x86_bios_rom_init aliases the last 128 KiB of pc.bios below 1 MiB.
            out.append(RegionPages(ISA_BIOS_ALIAS, True, min(ISA_BIOS_MAX, b.total),
                                   ("isa-bios",)))
    for b in rw:
        out.append(RegionPages(b.name, False, b.total, _rw_keys(b.name, loc, devices)))
    return out


def _ro_keys(name: str, loc: Locator, devices: dict[str, pci.PciDevice]) -> tuple[str, ...]:
    if name in MACHINE_MAPPINGS:
        return (name,)
    seen = loc.bars.get(name)
    if seen:
        return tuple(sorted(seen))
    dev = devices.get(pci.block_device_path(name) or "")
    if dev is None or not dev.qemu_id:
        return ()
    # Not mapped now: an option ROM is always the ROM BAR, qxl.vrom always BAR 2.
    return (f"{dev.qemu_id}/bar{QXL_ROM_BAR if name.endswith('/qxl.vrom') else ROM_BAR}",)


def _rw_keys(name: str, loc: Locator, devices: dict[str, pci.PciDevice]) -> tuple[str, ...]:
    keys = set(loc.bars.get(name, ()))
    dev = devices.get(pci.block_device_path(name) or "")
    if dev is not None and dev.qemu_id and name in loc.windows:
        keys.add(f"{dev.qemu_id}/{VGA_WINDOW}")
    return tuple(sorted(keys))


def _read(r: RegionPages, pid: int | None, vmas: Sequence[tuple[int, int]], loc: Locator,
          *, boot: bool, kvm: bool) -> RegionPages:
    block = "pc.bios" if r.region == ISA_BIOS_ALIAS else r.region
    found = loc.found.get(block)
    if found is None:
        return replace(r, unresolved=loc.reason(block, boot=boot, kvm=kvm))
    hva, source = found.hva, found.method
    if r.region == ISA_BIOS_ALIAS:
        total = next(b.total for b in loc.blocks if b.name == "pc.bios")
        hva, source = hva + total - r.bytes, f"{source} (pc.bios + {total - r.bytes:#x})"
    if pid is None:
        return replace(r, hva=hva, source=source, unresolved="QEMU's pid is not known")
    if not any(s <= hva and hva + r.bytes <= s + n for s, n in vmas):
        return replace(r, hva=hva, source=source,
                        unresolved=f"{hva:#x} is not inside one of QEMU's anonymous RAM-block "
                                   "mappings (region gone, or a file/memfd backend)")
    try:
        pages = pagemap.scan(pid, hva, r.bytes)
    except pagemap.PagemapError as e:
        return replace(r, hva=hva, source=source, unresolved=f"pagemap unreadable: {e}")
    return replace(r, hva=hva, source=source, pages=pages)


def _facts(regions: Sequence[RegionPages]) -> PageFacts:
    seen = [r.pages.pfns_visible for r in regions
            if r.pages is not None and r.pages.pfns_visible is not None]
    ksm = host_sources.KSM_DIR
    return PageFacts(os.uname().release, host_sources.thp_enabled(),
                     host_sources.read_sysfs(f"{ksm}/run"),
                     host_sources.read_sysfs(f"{ksm}/use_zero_pages"),
                     any(seen) if seen else None)


def _log(path: str | None) -> str:
    """The end of the domain's log (QEMU's allocation trace, if it was started with it)."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - MAX_LOG_BYTES))
            return f.read(MAX_LOG_BYTES).decode("utf-8", "replace")
    except OSError:
        return ""
