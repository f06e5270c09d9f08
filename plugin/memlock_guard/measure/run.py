"""Measure what a running QEMU maps for DMA, to check the ledger against reality.

QEMU's VFIO listener DMA-maps every section of the ``memory`` address space whose
region is RAM: plain RAM (``ram``) and read-only RAM (``rom``: pc.bios, ROM BARs,
qxl.vrom), each guest-physical range on its own, aliases included. It skips I/O
regions, ROM *devices* (``romd``, e.g. pflash) and other devices' mmapped BARs
(``ramd``, which the kernel does not charge). ``info mtree -f`` prints exactly that
flat view, so what it lists as ram/rom is what one VFIO container would pin.

Each mapped range is either guest RAM (the memory backends: ``pc.ram``, ``ram-node0``,
``memdimm0`` ..., and the aliases of them that QEMU places, e.g. the PAM shadow and the
kvmvapic page) or *non-RAM*: firmware, video RAM BARs, ROM BARs, legacy-window aliases.
The ledger's non-RAM items are checked against the non-RAM bytes.

Not everything is mapped at once (ledger.py): the firmware maps option-ROM BARs one at
a time for 1-25 ms during boot, and SeaBIOS's isa-bios alias and pc.rom vanish within
~20 ms of the first instruction. A single look at a running VM therefore misses the
peak; ``measure_boot`` follows a boot instead. It starts the domain paused (the
pre-firmware layout), switches on QEMU's ``pci_update_mappings_add/del`` trace events
(exact times of every BAR mapping, written to the domain's log by QEMU's log trace
backend), resumes, samples the flat view as fast as the monitor answers, and combines
the two: the peak is the largest non-RAM total of any sample, or of a traced ROM BAR
plus what the samples next to it show.

The parsers and the peak arithmetic are pure functions (unit-tested on captured
monitor text); the classes at the end talk to libvirt (libvirt-python, else virsh).
"""

from __future__ import annotations

import bisect
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..accounting.ledger import Kind, Ledger, Mode
from ..support.errors import MemlockGuardError
from ..support.units import MiB

PAGE = 4096  # x86 host page: the VFIO listener trims every section to whole pages
ROM_SLOT = 6  # PCI_ROM_SLOT: the BAR index QEMU's trace uses for expansion ROMs
# Flat-view types that the VFIO listener maps (memory_region_is_ram); "nv-" marks a
# non-volatile (nvdimm) range.
DMA_TYPES = frozenset({"ram", "rom", "nv-ram", "nv-rom"})
# Guest RAM region names when the monitor cannot list memory backends (old machine
# types allocate main memory as a plain region with these names).
FALLBACK_GUEST_RAM = frozenset({"pc.ram", "microvm.ram"})
TRACE_EVENTS = ("pci_update_mappings_add", "pci_update_mappings_del")


class MeasureError(MemlockGuardError):
    """The domain could not be measured (not found, wrong state, monitor failure)."""


# --------------------------------------------------------------------------- parsers


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


# ------------------------------------------------------------------- classification


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


# ---------------------------------------------------------------------- boot peak


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
            best = Peak(s.snapshot.non_ram_bytes, s.t1, _parts(s.snapshot.non_ram), notes)
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
            best = Peak(total, t, _parts(base) + tuple((q.label, ram[q.key]) for q in live),
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


def _parts(maps: Iterable[Mapping]) -> tuple[tuple[str, int], ...]:
    return tuple((f"{m.region} @{m.start:#x} ({m.type})", m.size) for m in maps)


def rom_counts(ramblocks: Sequence[RamBlock]) -> Callable[[str], bool]:
    """Whether a device's ROM BAR is RAM that VFIO maps (by QEMU type name).

    Emulated devices back their ROM BAR with a RAM block (pci_add_option_rom). A
    vfio-pci device's ROM BAR reads the physical ROM (emulated I/O) unless a
    ``romfile`` backs it, which shows as a ``vfio-pci.rom`` block.
    """
    vfio_rom_file = any(b.name.endswith("/vfio-pci.rom") for b in ramblocks)
    return lambda device: not device.startswith("vfio-pci") or vfio_rom_file


# ------------------------------------------------------------- estimate vs measured


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


# --------------------------------------------------------------------------- live


class Target(Protocol):
    """A libvirt domain that can be driven for a measurement."""

    name: str
    log_path: str | None  # where QEMU's stderr (and so its trace output) goes

    def hmp(self, command: str) -> str: ...
    def xml(self) -> str: ...
    def is_active(self) -> bool: ...
    def is_persistent(self) -> bool: ...
    def start_paused(self) -> None: ...
    def resume(self) -> None: ...
    def destroy(self) -> None: ...


def default_log_path(uri: str | None, name: str) -> str | None:
    """libvirt's per-domain QEMU log, which receives QEMU's trace output (local only)."""
    if uri in (None, "", "qemu:///system"):
        return f"/var/log/libvirt/qemu/{name}.log"
    if uri == "qemu:///session":
        return os.path.expanduser(f"~/.cache/libvirt/qemu/log/{name}.log")
    return None  # remote: the log is on another machine


class LibvirtTarget:
    """Through libvirt-python: a monitor round trip takes ~2 ms, so sampling is dense."""

    def __init__(self, name: str, uri: str | None = None) -> None:
        import libvirt_qemu  # type: ignore[import-untyped]

        from ..libvirtd import client as lc

        self._libvirt: Any = lc.require_libvirt()
        self._qemu: Any = libvirt_qemu
        uri = uri or lc.DEFAULT_URI
        self._conn: Any = lc.connect(uri)  # retried while the daemon is absent
        self._dom: Any = lc.lookup(self._conn, name)  # by name, UUID or id
        self.name = str(self._dom.name())
        self.log_path = default_log_path(uri, self.name)

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except self._libvirt.libvirtError as e:
            raise MeasureError(f"{self.name}: {_libvirt_message(e)}") from None

    def hmp(self, command: str) -> str:
        flag = self._qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
        return str(self._call(lambda: self._qemu.qemuMonitorCommand(self._dom, command, flag)))

    def xml(self) -> str:
        return str(self._call(lambda: self._dom.XMLDesc(0)))

    def is_active(self) -> bool:
        return bool(self._call(self._dom.isActive))

    def is_persistent(self) -> bool:
        return bool(self._call(self._dom.isPersistent))

    def start_paused(self) -> None:
        self._call(lambda: self._dom.createWithFlags(self._libvirt.VIR_DOMAIN_START_PAUSED))

    def resume(self) -> None:
        self._call(self._dom.resume)

    def destroy(self) -> None:
        self._call(self._dom.destroy)


def _libvirt_message(e: Any) -> str:
    return str(e.get_error_message() if hasattr(e, "get_error_message") else e)


class VirshTarget:
    """Through the virsh client, when libvirt-python is not installed (slower sampling)."""

    def __init__(self, name: str, uri: str | None = None) -> None:
        if shutil.which("virsh") is None:
            raise MeasureError("neither libvirt-python nor virsh is available")
        self.name = name
        self.uri = uri
        self.log_path = default_log_path(uri, name)
        self._virsh("dominfo", name)  # fails early when the domain does not exist

    def _virsh(self, *args: str) -> str:
        cmd = ["virsh", *(["-c", self.uri] if self.uri else []), *args]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.SubprocessError) as e:
            raise MeasureError(f"virsh {args[0]}: {e}") from None
        if p.returncode != 0:
            msg = p.stderr.strip().removeprefix("error: ").replace("\nerror: ", ": ")
            raise MeasureError(f"virsh {args[0]} {self.name}: {msg}")
        return p.stdout

    def hmp(self, command: str) -> str:
        return self._virsh("qemu-monitor-command", self.name, "--hmp", command)

    def xml(self) -> str:
        return self._virsh("dumpxml", self.name)

    def is_active(self) -> bool:
        return self._virsh("domstate", self.name).strip() not in ("shut off", "crashed")

    def is_persistent(self) -> bool:
        return "Persistent:     yes" in self._virsh("dominfo", self.name)

    def start_paused(self) -> None:
        self._virsh("start", self.name, "--paused")

    def resume(self) -> None:
        self._virsh("resume", self.name)

    def destroy(self) -> None:
        self._virsh("destroy", self.name)


def open_target(name: str, uri: str | None = None) -> Target:
    """libvirt-python when importable (with tenacity, as the other verbs), else virsh."""
    from importlib.util import find_spec

    if find_spec("libvirt_qemu") is None or find_spec("tenacity") is None:
        return VirshTarget(name, uri)
    return LibvirtTarget(name, uri)


@dataclass(frozen=True, slots=True)
class Measurement:
    """What QEMU maps: now, or the peak over a followed boot."""

    domain: str
    xml: str  # the live XML QEMU was started from (virsh dumpxml while running)
    boot: bool
    non_ram_bytes: int  # now, or the boot peak
    guest_ram_bytes: int  # guest RAM mapped in the last sample
    parts: tuple[tuple[str, int], ...]  # what makes up non_ram_bytes
    ramblocks: tuple[RamBlock, ...]
    samples: int = 1
    duration: float = 0.0  # seconds followed after resume
    pre_firmware_bytes: int | None = None  # non-RAM while paused before the first insn
    final_bytes: int | None = None  # non-RAM in the last sample
    roms: tuple[BarInterval, ...] = ()  # the ROM BARs the firmware mapped (RAM ones)
    warnings: tuple[str, ...] = field(default=())
    notes: tuple[str, ...] = field(default=())


def _guest_ram(target: Target) -> frozenset[str]:
    return guest_ram_regions(parse_memdevs(target.hmp("info memdev")))


def measure_now(target: Target) -> Measurement:
    """One look at a running domain: the non-RAM bytes mapped at this moment."""
    if not target.is_active():
        raise MeasureError(f"domain {target.name} is not running (use --boot to follow a "
                           "boot of a shut-off domain)")
    snap = snapshot(target.hmp("info mtree -f"), _guest_ram(target))
    return Measurement(target.name, target.xml(), False, snap.non_ram_bytes,
                       snap.guest_ram_bytes, _parts(snap.non_ram),
                       parse_ramblocks(target.hmp("info ramblock")))


def measure_boot(target: Target, *, settle: float = 3.0, timeout: float = 60.0,
                 clock: Callable[[], float] = time.time) -> Measurement:
    """Start the shut-off domain paused, follow its firmware, then DESTROY it.

    Sampling stops once nothing has changed (no flat-view difference, no traced BAR
    event) for ``settle`` seconds, or after ``timeout`` seconds. Under SeaBIOS the
    quiet period only starts once POST is over (``post_finished``): SeaBIOS can be
    silent for seconds between programming the BARs and running the option ROMs.
    """
    if target.is_active():
        raise MeasureError(f"domain {target.name} is running: --boot starts it itself "
                           "(and destroys it afterwards); shut it down first")
    if not target.is_persistent():
        raise MeasureError(f"domain {target.name} is transient: --boot needs a defined "
                           "domain it can start and destroy")
    warnings: list[str] = []
    log_offset = _file_size(target.log_path)
    target.start_paused()
    try:
        xml = target.xml()
        guest_ram = _guest_ram(target)
        traced = _enable_trace(target, warnings)
        samples = [_sample(target, guest_ram, clock)]
        pre_firmware = samples[0].snapshot.non_ram_bytes
        seabios = looks_like_seabios(samples[0].snapshot)
        post_done = not seabios
        log = _LogTail(target.log_path, log_offset) if traced else None
        target.resume()
        resumed = last_change = clock()
        while True:
            s = _sample(target, guest_ram, clock)
            if s.snapshot.mappings != samples[-1].snapshot.mappings:
                last_change = s.t1
            samples.append(s)
            if not post_done and post_finished(s.snapshot):
                post_done, last_change = True, s.t1
            if log is not None and log.grew():
                last_change = clock()
            now = clock()
            if now - resumed >= timeout:
                if not post_done:
                    warnings.append(f"SeaBIOS had not finished POST after {timeout:g} s: "
                                    "the boot may not have been followed to its end")
                break
            if post_done and now - last_change >= settle:
                break
        duration = clock() - resumed
        ramblocks = parse_ramblocks(target.hmp("info ramblock"))
        events = parse_bar_trace(log.read_all()) if log is not None else ()
    finally:
        target.destroy()
    if traced and not events:
        warnings.append(f"no BAR trace events found in {target.log_path}: ROM BARs shorter "
                        "than the sampling interval may be missed")
    elif events and all(e.time is None for e in events):
        warnings.append("trace lines carry no timestamps (-msg timestamp=off): ROM BARs "
                        "counted only where a sample caught them")
    bars = bar_intervals(events)
    peak = boot_peak(samples, bars, ramblocks)
    counts = rom_counts(ramblocks)
    last = samples[-1].snapshot
    return Measurement(target.name, xml, True, peak.non_ram_bytes, last.guest_ram_bytes,
                       peak.parts, ramblocks, samples=len(samples), duration=duration,
                       pre_firmware_bytes=pre_firmware, final_bytes=last.non_ram_bytes,
                       roms=tuple(b for b in bars if b.is_rom and counts(b.device)),
                       warnings=tuple(warnings), notes=peak.notes)


def looks_like_seabios(pre_firmware: Snapshot) -> bool:
    """Before the first instruction: a ``-bios`` image of at most 256 KiB at the top of
    4 GiB (SeaBIOS; OVMF as -bios is megabytes, OVMF as pflash is no pc.bios at all)."""
    return any(m.region == "pc.bios" and m.end == 0xFFFFFFFF and m.size <= 256 * 1024
               for m in pre_firmware.non_ram)


def post_finished(snap: Snapshot) -> bool:
    """SeaBIOS is done with POST (option ROMs included): it has write-protected its
    shadow copy, so guest RAM below 1 MiB shows as ``rom`` (make_bios_readonly)."""
    return any(m.guest_ram and m.type == "rom" and m.start < 0x100000 for m in snap.mappings)


def _sample(target: Target, guest_ram: frozenset[str], clock: Callable[[], float]) -> Sample:
    t0 = clock()
    text = target.hmp("info mtree -f")
    return Sample(t0, clock(), snapshot(text, guest_ram))


def _enable_trace(target: Target, warnings: list[str]) -> bool:
    if target.log_path is None or not os.access(target.log_path, os.R_OK):
        warnings.append("QEMU's log is not readable here: ROM BARs are seen only when a "
                        "sample catches them")
        return False
    for ev in TRACE_EVENTS:
        out = target.hmp(f"trace-event {ev} on").strip()
        if out:  # silence is success; QEMU answers errors in text
            warnings.append(f"trace-event {ev}: {out[:120]}")
            return False
    return True


def _file_size(path: str | None) -> int:
    if path is None:
        return 0
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


class _LogTail:
    """New bytes of the domain log since the measurement began (libvirt appends)."""

    def __init__(self, path: str | None, offset: int) -> None:
        self.path = path
        self.offset = offset
        self.seen = offset

    def grew(self) -> bool:
        size = _file_size(self.path)
        if size > self.seen:
            self.seen = size
            return True
        return False

    def read_all(self) -> str:
        if self.path is None:
            return ""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                return f.read(64 * MiB).decode("utf-8", "replace")
        except OSError:
            return ""

