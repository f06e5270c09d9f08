"""What the VFIO listener would DMA-map from a flat view, and whether each range is RAM.

QEMU's VFIO listener maps every section of AS "memory" whose region is RAM (``ram``,
and read-only ``rom``), aliases included, trimmed to whole host pages; it skips I/O,
ROM *devices* (``romd``, e.g. pflash) and other devices' mmapped BARs (``ramd``). Each
mapped range is guest RAM (the memory backends and their aliases) or non-RAM: firmware,
video RAM BARs, ROM BARs, legacy-window aliases.
"""

from __future__ import annotations

from dataclasses import dataclass

from .qemu_text import FlatView, memory_flatview

PAGE = 4096  # x86 host page: the VFIO listener trims every section to whole pages
# Flat-view types that the VFIO listener maps (memory_region_is_ram); "nv-" marks a
# non-volatile (nvdimm) range.
DMA_TYPES = frozenset({"ram", "rom", "nv-ram", "nv-rom"})


@dataclass(frozen=True, slots=True)
class Mapping:
    """A range the VFIO listener would DMA-map, after its page trimming."""

    start: int
    size: int
    type: str
    region: str
    offset: int | None
    guest_ram: bool

    @property
    def end(self) -> int:
        return self.start + self.size - 1

    @property
    def key(self) -> tuple[int, int, str, str]:
        return self.start, self.size, self.type, self.region


def dma_mappings(view: FlatView, guest_ram: frozenset[str],
                 page: int = PAGE) -> tuple[Mapping, ...]:
    """What vfio_listener_region_add would map from this flat view.

    ram/rom ranges only; bit 63 set means a 64-bit BAR mid-sizing (skipped by QEMU);
    each range is trimmed to whole host pages, and one that becomes empty is dropped.
    """
    out = []
    for r in view.ranges:
        if r.type not in DMA_TYPES or r.start & (1 << 63):
            continue
        start = -(-r.start // page) * page
        end = ((r.end + 1) // page) * page  # exclusive
        if end <= start:
            continue
        out.append(Mapping(start, end - start, r.type, r.region, r.offset,
                           r.region in guest_ram))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Snapshot:
    mappings: tuple[Mapping, ...]

    @property
    def guest_ram_bytes(self) -> int:
        return sum(m.size for m in self.mappings if m.guest_ram)

    @property
    def non_ram(self) -> tuple[Mapping, ...]:
        return tuple(m for m in self.mappings if not m.guest_ram)

    @property
    def non_ram_bytes(self) -> int:
        return sum(m.size for m in self.non_ram)


def snapshot(mtree_text: str, guest_ram: frozenset[str], page: int = PAGE) -> Snapshot:
    return Snapshot(dma_mappings(memory_flatview(mtree_text), guest_ram, page))


def looks_like_seabios(pre_firmware: Snapshot) -> bool:
    """Before the first instruction: a ``-bios`` image of at most 256 KiB at the top of
    4 GiB (SeaBIOS; OVMF as -bios is megabytes, OVMF as pflash is no pc.bios at all)."""
    return any(m.region == "pc.bios" and m.end == 0xFFFFFFFF and m.size <= 256 * 1024
               for m in pre_firmware.non_ram)


def post_finished(snap: Snapshot) -> bool:
    """SeaBIOS is done with POST (option ROMs included): it has write-protected its
    shadow copy, so guest RAM below 1 MiB shows as ``rom`` (make_bios_readonly)."""
    return any(m.guest_ram and m.type == "rom" and m.start < 0x100000 for m in snap.mappings)
