"""Parsers of what QEMU prints: ``info mtree -f``, ``info ramblock``, ``info memdev``, and
the ``pci_update_mappings_add/del`` trace lines in the domain's log.

Pure functions on captured text (tests/data/qemu/ holds real captures).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..support.errors import MemlockGuardError

ROM_SLOT = 6  # PCI_ROM_SLOT: the BAR index QEMU's trace uses for expansion ROMs
# Guest RAM region names when the monitor cannot list memory backends (old machine
# types allocate main memory as a plain region with these names).
FALLBACK_GUEST_RAM = frozenset({"pc.ram", "microvm.ram"})


class MeasureError(MemlockGuardError):
    """The domain could not be measured (not found, wrong state, monitor failure)."""


@dataclass(frozen=True, slots=True)
class FlatRange:
    """One line of a flat view: a guest-physical range and the region behind it."""

    start: int
    end: int  # inclusive, as QEMU prints it
    priority: int
    type: str  # ram | rom | romd | ramd | i/o | nv-ram ...
    region: str  # the terminal region's name (an alias shows its target, e.g. pc.bios)
    offset: int | None  # offset into the region, when not 0
    accel: str | None = None  # "KVM" when the accelerator maps it as a memory slot

    @property
    def size(self) -> int:
        return self.end - self.start + 1


@dataclass(frozen=True, slots=True)
class FlatView:
    address_spaces: tuple[str, ...]
    root: str | None
    ranges: tuple[FlatRange, ...]


_RANGE = re.compile(r"^\s+([0-9a-f]+)-([0-9a-f]+) \(prio (-?\d+), ([a-z/-]+)\): (.*)$")
# After "): " comes the region name (which may contain spaces, e.g. vfio's
# "0000:01:00.0 BAR 0 mmaps[0]"), then " @offset" and the accelerator, both optional.
_TAIL = re.compile(r"^(.*?)(?: @([0-9a-f]+))?(?: (KVM|HVF|WHPX|NVMM|HAX|TCG))?\s*$")
_AS = re.compile(r'^ AS "(.*)", root: (.*)$')


def parse_flatviews(text: str) -> tuple[FlatView, ...]:
    """Every flat view in ``info mtree -f`` output, with the address spaces it serves."""
    views: list[FlatView] = []
    spaces: list[str] = []
    root: str | None = None
    ranges: list[FlatRange] = []
    started = False

    def flush() -> None:
        if started:
            views.append(FlatView(tuple(spaces), root, tuple(ranges)))

    for line in text.splitlines():
        if line.startswith("FlatView #"):
            flush()
            started, spaces, root, ranges = True, [], None, []
            continue
        m = _AS.match(line)
        if m:
            spaces.append(m.group(1))
            continue
        if line.startswith(" Root memory region:"):
            value = line.split(":", 1)[1].strip()
            root = None if value == "(none)" else value
            continue
        m = _RANGE.match(line)
        if m and started:
            tail = _TAIL.match(m.group(5))
            assert tail is not None  # the pattern matches any string
            ranges.append(FlatRange(
                start=int(m.group(1), 16), end=int(m.group(2), 16),
                priority=int(m.group(3)), type=m.group(4), region=tail.group(1),
                offset=int(tail.group(2), 16) if tail.group(2) else None,
                accel=tail.group(3)))
    flush()
    return tuple(views)


def memory_flatview(text: str) -> FlatView:
    """The flat view of AS "memory" (what VFIO maps without a vIOMMU)."""
    for view in parse_flatviews(text):
        if "memory" in view.address_spaces:
            return view
    raise MeasureError('no flat view for address space "memory" in `info mtree -f` output')


@dataclass(frozen=True, slots=True)
class RamBlock:
    name: str  # e.g. pc.ram, 0000:00:01.0/vga.vram, /rom@etc/acpi/tables
    page_size: str
    offset: int
    used: int
    total: int


_RAMBLOCK = re.compile(r"^\s*(.+?)\s+(\d+ [KMGTP]?i?B)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)"
                       r"\s+0x([0-9a-f]+)\s*$")


def parse_ramblocks(text: str) -> tuple[RamBlock, ...]:
    """``info ramblock``: QEMU's RAM blocks (mapped or not: fw_cfg blobs never are)."""
    out = []
    for line in text.splitlines():
        m = _RAMBLOCK.match(line)
        if m:
            out.append(RamBlock(m.group(1), m.group(2), int(m.group(3), 16),
                                int(m.group(4), 16), int(m.group(5), 16)))
    return tuple(out)


def parse_memdevs(text: str) -> tuple[str, ...]:
    """Backend ids from ``info memdev``; a backend's region carries its id as name."""
    return tuple(m.group(1) for m in re.finditer(r"^memory backend: (\S+)\s*$", text, re.M))


def guest_ram_regions(memdevs: Iterable[str]) -> frozenset[str]:
    """Region names that are guest RAM: every memory backend, plus the legacy names."""
    return frozenset(memdevs) | FALLBACK_GUEST_RAM


@dataclass(frozen=True, slots=True)
class BarEvent:
    """A ``pci_update_mappings_add/del`` trace line: a BAR entering or leaving the map."""

    time: float | None  # wall-clock seconds (QEMU's -msg timestamp prefix), if present
    added: bool
    device: str  # QEMU type name, e.g. VGA, virtio-net-pci
    bdf: str  # bus:slot.function as the trace prints it, e.g. 01:00.0
    bar: int  # 0-5, 6 = expansion ROM
    address: int
    size: int

    @property
    def is_rom(self) -> bool:
        return self.bar == ROM_SLOT


_TRACE = re.compile(r"(?:^|\s)(?:\d+@(\d+\.\d+):)?pci_update_mappings_(add|del) (\S+) "
                    r"([0-9a-f]{2}:[0-9a-f]{2}\.[0-7]) (\d+),0x([0-9a-f]+)\+0x([0-9a-f]+)\s*$")


def parse_bar_trace(text: str) -> tuple[BarEvent, ...]:
    """BAR map/unmap events from a QEMU log (lines of other kinds are ignored)."""
    out = []
    for line in text.splitlines():
        m = _TRACE.search(line)
        if m:
            out.append(BarEvent(
                time=float(m.group(1)) if m.group(1) else None, added=m.group(2) == "add",
                device=m.group(3), bdf=m.group(4), bar=int(m.group(5)),
                address=int(m.group(6), 16), size=int(m.group(7), 16)))
    return tuple(out)


# -- host addresses of RAM blocks (measure --zero-pages) ------------------------------------

_GPA2HVA = re.compile(r"Host virtual address for 0x([0-9a-f]+) \((.*)\) is 0x([0-9a-f]+)")


def parse_gpa2hva(answer: str) -> tuple[str, int] | None:
    """(region, host address) from HMP ``gpa2hva``; None for its refusals ("No memory is
    mapped at address ...", "Memory at address ... is not RAM").

    monitor/misc.c gpa2hva() (QEMU 7.2) names the terminal region of the address (an
    alias shows its target, e.g. isa-bios -> pc.bios) and the host address of that very
    byte: qemu_map_ram_ptr(ram_block, offset within the region).
    """
    m = _GPA2HVA.search(answer)
    return (m.group(2), int(m.group(3), 16)) if m else None


@dataclass(frozen=True, slots=True)
class KvmSlot:
    """A ``kvm_set_user_memory`` trace line: KVM learning where a memory slot lives."""

    slot: int
    flags: int  # 0x2 = KVM_MEM_READONLY
    gpa: int
    size: int  # 0: the slot is being removed
    ua: int  # userspace (host virtual) address of the slot's first byte


# accel/kvm/trace-events (QEMU 7.2), emitted by kvm_set_user_memory_region().
_KVM_SLOT = re.compile(r"kvm_set_user_memory Slot#(\d+) flags=0x([0-9a-f]+) "
                       r"gpa=0x([0-9a-f]+) size=0x([0-9a-f]+) ua=0x([0-9a-f]+) ret=(-?\d+)")


def parse_kvm_slots(text: str) -> tuple[KvmSlot, ...]:
    """The successful, non-empty KVM slot updates of a QEMU log."""
    out = []
    for m in _KVM_SLOT.finditer(text):
        if int(m.group(6)) == 0 and int(m.group(4), 16):
            out.append(KvmSlot(int(m.group(1)), int(m.group(2), 16), int(m.group(3), 16),
                               int(m.group(4), 16), int(m.group(5), 16)))
    return tuple(out)


# trace-events:41 and util/trace-events:51 (QEMU 7.2). ram_block_add() calls
# find_ram_offset() (traced, except for the very first block, whose offset is 0) and
# then qemu_anon_ram_alloc() for the block's max_length. Lines carry "PID@TIME:".
_ALLOC = re.compile(r"^(\d+)@[0-9.]+:(?:find_ram_offset size: 0x([0-9a-f]+) @ 0x([0-9a-f]+)"
                    r"|qemu_anon_ram_alloc size (\d+) ptr 0x([0-9a-f]+))\s*$", re.M)


def parse_alloc_trace(text: str, pid: int) -> dict[int, tuple[int, int]]:
    """ram_addr offset -> (size, host address) of each RAM block process ``pid`` allocated,
    from a log of a QEMU started with ``-trace find_ram_offset -trace
    qemu_anon_ram_alloc``. A block not allocated by qemu_anon_ram_alloc (a file or memfd
    backend) has a find_ram_offset line and no allocation: it is skipped, and the next
    find_ram_offset line takes over."""
    out: dict[int, tuple[int, int]] = {}
    offset: int | None = 0
    for m in _ALLOC.finditer(text):
        if int(m.group(1)) != pid:
            continue
        if m.group(2):
            offset = int(m.group(3), 16)
        elif offset is not None:
            out[offset] = (int(m.group(4)), int(m.group(5), 16))
            offset = None
    return out
