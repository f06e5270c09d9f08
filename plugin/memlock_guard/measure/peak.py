"""The boot-time peak: flat-view samples and traced BAR intervals combined.

Not everything is mapped at once (accounting/ledger.py): the firmware maps option-ROM
BARs one at a time for 1-25 ms during boot, so a sample rarely catches one. The trace
gives each BAR's exact interval; the samples give what else was mapped around it.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .mappings import Mapping, Snapshot
from .qemu_text import ROM_SLOT, BarEvent, RamBlock


@dataclass(frozen=True, slots=True)
class Sample:
    """A flat view read between t0 (request sent) and t1 (answer received)."""

    t0: float
    t1: float
    snapshot: Snapshot


@dataclass(frozen=True, slots=True)
class BarInterval:
    """One BAR from the moment it entered the memory map until it left it."""

    device: str
    bdf: str
    bar: int
    address: int
    size: int
    start: float
    end: float | None  # None: still mapped when the measurement ended

    @property
    def key(self) -> tuple[str, int]:
        return self.bdf, self.bar

    @property
    def is_rom(self) -> bool:
        return self.bar == ROM_SLOT

    @property
    def label(self) -> str:
        what = "ROM BAR" if self.is_rom else f"BAR{self.bar}"
        return f"{what} {self.device} {self.bdf}"

    def live_at(self, t: float) -> bool:
        return self.start <= t and (self.end is None or self.end > t)

    def active_during(self, t0: float, t1: float) -> bool:
        """Mapped at some moment of [t0, t1]."""
        return self.start <= t1 and (self.end is None or self.end >= t0)

    def spans(self, t0: float, t1: float) -> bool:
        """Mapped during the whole of [t0, t1]."""
        return self.start <= t0 and (self.end is None or self.end >= t1)

    def covers(self, m: Mapping) -> bool:
        return self.address <= m.start and m.end <= self.address + self.size - 1


def bar_intervals(events: Iterable[BarEvent]) -> tuple[BarInterval, ...]:
    """Pair each timed ``add`` with the next ``del`` of the same BAR (untimed: skipped)."""
    timed = sorted((e for e in events if e.time is not None), key=lambda e: e.time or 0.0)
    open_: dict[tuple[str, int], BarEvent] = {}
    out: list[BarInterval] = []

    def close(e: BarEvent, end: float | None) -> None:
        assert e.time is not None
        out.append(BarInterval(e.device, e.bdf, e.bar, e.address, e.size, e.time, end))

    for e in timed:
        prev = open_.pop((e.bdf, e.bar), None)
        if prev is not None:  # a del, or a re-map without one: the old mapping ends here
            close(prev, e.time)
        if e.added:
            open_[(e.bdf, e.bar)] = e
    for e in open_.values():
        close(e, None)
    return tuple(sorted(out, key=lambda i: i.start))


# A RAM block owned by a PCI device: "0000:00:01.0/vga.vram", "0000:00:02.0:00.0/x.rom".
_DEVICE_BLOCK = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7](?::[0-9a-f]{2}\.[0-7])*/")


@dataclass(frozen=True, slots=True)
class Peak:
    non_ram_bytes: int
    at: float | None  # wall-clock time of the peak
    parts: tuple[tuple[str, int], ...]  # (what, bytes) that make up the peak
    notes: tuple[str, ...] = ()


def bar_ram_bytes(bars: Sequence[BarInterval], samples: Sequence[Sample],
                  ramblocks: Sequence[RamBlock] = ()) -> tuple[dict[tuple[str, int], int],
                                                               tuple[str, ...]]:
    """How many bytes of each BAR VFIO maps (0 for I/O), and notes on guesses.

    A ROM BAR of an emulated device is RAM of its full size (rom_counts). Any other
    BAR is learned from the samples taken while it was mapped throughout: the non-RAM
    ranges inside it. A BAR no sample saw (the firmware turned its decoding on and off
    between two samples) counts as RAM when some device RAM block has its size,
    which can only raise the measurement.
    """
    counts = rom_counts(ramblocks)
    device_ram = {b.total for b in ramblocks
                  if _DEVICE_BLOCK.match(b.name) and not b.name.endswith(".rom")}
    ram: dict[tuple[str, int], int] = {}
    seen: set[tuple[str, int]] = set()
    starts = [s.t0 for s in samples]
    for b in bars:
        if b.is_rom:
            ram[b.key] = b.size if counts(b.device) else 0
            seen.add(b.key)
            continue
        looked = 0
        for s in samples[bisect.bisect_left(starts, b.start):]:
            if (b.end is not None and s.t0 > b.end) or looked == 3:
                break  # a BAR's RAM does not change: a few looks settle it
            if b.spans(s.t0, s.t1):
                looked += 1
                seen.add(b.key)
                inside = sum(m.size for m in s.snapshot.non_ram if b.covers(m))
                ram[b.key] = max(ram.get(b.key, 0), inside)
    notes = []
    for b in bars:
        if b.key not in seen:
            seen.add(b.key)
            if b.size in device_ram:
                ram[b.key] = b.size
                notes.append(f"{b.label} ({b.size} bytes) was never sampled while mapped; "
                             "counted as RAM (a device RAM block has its size)")
    return ram, tuple(notes)


def boot_peak(samples: Sequence[Sample], bars: Sequence[BarInterval],
              ramblocks: Sequence[RamBlock] = ()) -> Peak:
    """The most non-RAM bytes mapped at once over a boot.

    Every sample is a candidate as it is. Between samples, the BAR trace says exactly
    which BARs were mapped: at each BAR ``add`` the candidate is the RAM of every BAR
    mapped at that moment plus the rest of the layout (firmware, legacy aliases), read
    from the samples next to it, the larger of the one before and the one after.
    Firmware maps an option-ROM BAR for a few milliseconds, and OVMF switches a
    device's decoding on and off around it, so samples alone miss the peak.
    """
    ram, notes = bar_ram_bytes(bars, samples, ramblocks)
    best = Peak(0, None, (), notes)
    for s in samples:
        if s.snapshot.non_ram_bytes > best.non_ram_bytes:
            best = Peak(s.snapshot.non_ram_bytes, s.t1, parts_of(s.snapshot.non_ram), notes)
    if not bars:
        return best
    ends = [s.t1 for s in samples]
    starts = [s.t0 for s in samples]
    base_cache: dict[int, tuple[Mapping, ...]] = {}
    for b in bars:
        if not ram.get(b.key):
            continue
        t = b.start
        live = [q for q in bars if q.live_at(t) and ram.get(q.key)]
        base: tuple[Mapping, ...] = ()
        for i in _neighbours(starts, ends, t):
            if i not in base_cache:
                s = samples[i]
                base_cache[i] = tuple(
                    m for m in s.snapshot.non_ram
                    if not any(q.active_during(s.t0, s.t1) and q.covers(m) for q in bars))
            if sum(m.size for m in base_cache[i]) > sum(m.size for m in base):
                base = base_cache[i]
        total = sum(m.size for m in base) + sum(ram[q.key] for q in live)
        if total > best.non_ram_bytes:
            best = Peak(total, t, parts_of(base) + tuple((q.label, ram[q.key]) for q in live),
                        notes)
    return best


def _neighbours(starts: list[float], ends: list[float], t: float) -> list[int]:
    """Indices of the last sample finished by t, any sample spanning t, the next one."""
    before = bisect.bisect_right(ends, t) - 1
    after = bisect.bisect_left(starts, t)
    out = [before] if before >= 0 else []
    out += [i for i in range(max(before + 1, 0), after) if starts[i] <= t <= ends[i]]
    if after < len(starts):
        out.append(after)
    return out


def parts_of(maps: Iterable[Mapping]) -> tuple[tuple[str, int], ...]:
    return tuple((f"{m.region} @{m.start:#x} ({m.type})", m.size) for m in maps)


def rom_counts(ramblocks: Sequence[RamBlock]) -> Callable[[str], bool]:
    """Whether a device's ROM BAR is RAM that VFIO maps (by QEMU type name).

    Emulated devices back their ROM BAR with a RAM block (pci_add_option_rom). A
    vfio-pci device's ROM BAR reads the physical ROM (emulated I/O) unless a
    ``romfile`` backs it, which shows as a ``vfio-pci.rom`` block.
    """
    vfio_rom_file = any(b.name.endswith("/vfio-pci.rom") for b in ramblocks)
    return lambda device: not device.startswith("vfio-pci") or vfio_rom_file
