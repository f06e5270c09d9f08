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

Not everything is mapped at once (accounting/ledger.py): the firmware maps option-ROM BARs one at
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

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..support.units import MiB
from .mappings import Snapshot, looks_like_seabios, post_finished, snapshot
from .peak import BarInterval, Sample, bar_intervals, boot_peak, parts_of, rom_counts
from .qemu_text import (
    BarEvent,
    MeasureError,
    RamBlock,
    guest_ram_regions,
    parse_bar_trace,
    parse_memdevs,
    parse_ramblocks,
)
from .target import Target
from .watch import GuestWatch, Stop, log_size

# A PCI device's ROM BAR block (pci_add_option_rom): "0000:00:03.0/virtio-net-pci.rom",
# "0000:00:02.0:00.0/e1000e.rom" behind a bridge; not qxl's "qxl.vrom" (BAR2).
_DEVICE_ROM = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7](?::[0-9a-f]{2}\.[0-7])*/"
                         r"[^/]+\.rom$")

TRACE_EVENTS = ("pci_update_mappings_add", "pci_update_mappings_del")


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


class BootObserver(Protocol):
    """Something else to learn from a followed boot (pages.PageProbe): its extra trace
    events, a look before the first instruction, and one at the end, before destroy."""

    trace_events: tuple[str, ...]

    def paused(self, target: Target, before: Snapshot) -> None: ...
    def done(self, target: Target, log_text: str) -> object: ...


def _guest_ram(target: Target) -> frozenset[str]:
    return guest_ram_regions(parse_memdevs(target.hmp("info memdev")))


def measure_now(target: Target) -> Measurement:
    """One look at a running domain: the non-RAM bytes mapped at this moment."""
    if not target.is_active():
        raise MeasureError(f"domain {target.name} is not running (use --boot to follow a "
                           "boot of a shut-off domain)")
    snap = snapshot(target.hmp("info mtree -f"), _guest_ram(target))
    return Measurement(target.name, target.xml(), False, snap.non_ram_bytes,
                       snap.guest_ram_bytes, parts_of(snap.non_ram),
                       parse_ramblocks(target.hmp("info ramblock")))


def measure_boot(target: Target, *, settle: float = 3.0, timeout: float = 60.0,
                 clock: Callable[[], float] = time.time,
                 observer: BootObserver | None = None) -> Measurement:
    """Start the shut-off domain paused, follow its firmware, then DESTROY it.

    Sampling stops once nothing has changed (no flat-view difference, no traced BAR
    event) for ``settle`` seconds, or after ``timeout`` seconds. Under SeaBIOS the
    quiet period only starts once POST is over (``post_finished``): SeaBIOS can be
    silent for seconds between programming the BARs and running the option ROMs.

    Not a measurement (MeasureError, so ``measure`` exits 2): the guest stopped running
    (watch.py: a crash, a KVM internal error, a shut-off) before its firmware had mapped
    its devices; or the trace worked but shows no BAR event at all although QEMU made
    ROM BARs (``info ramblock``) for the firmware to map.
    """
    if target.is_active():
        raise MeasureError(f"domain {target.name} is running: --boot starts it itself "
                           "(and destroys it afterwards); shut it down first")
    if not target.is_persistent():
        raise MeasureError(f"domain {target.name} is transient: --boot needs a defined "
                           "domain it can start and destroy")
    warnings: list[str] = []
    log_offset = log_size(target.log_path)
    target.start_paused()
    try:
        xml = target.xml()
        guest_ram = _guest_ram(target)
        ramblocks = parse_ramblocks(target.hmp("info ramblock"))
        rom_blocks = _rom_blocks(ramblocks)
        traced = _enable_trace(target, warnings)
        if traced and observer is not None:
            _enable_events(target, observer.trace_events, warnings)
        samples = [_sample(target, guest_ram, clock)]
        if observer is not None:
            observer.paused(target, samples[0].snapshot)
        pre_firmware = samples[0].snapshot.non_ram_bytes
        seabios = looks_like_seabios(samples[0].snapshot)
        post_done = not seabios
        log = _LogTail(target.log_path, log_offset) if traced else None
        target.resume()
        resumed = last_change = clock()
        watch = GuestWatch(target, log_offset, resumed, clock=clock)
        while True:
            try:
                s = _sample(target, guest_ram, clock)
            except MeasureError:
                stop = watch.poll(force=True)  # the monitor fails once QEMU has gone
                if stop is None:
                    raise
                _stopped(target, stop, post_done, rom_blocks, log, warnings)
                break
            if s.snapshot.mappings != samples[-1].snapshot.mappings:
                last_change = s.t1
            samples.append(s)
            if not post_done and post_finished(s.snapshot):
                post_done, last_change = True, s.t1
            if log is not None and log.grew():
                last_change = clock()
            stop = watch.poll()
            if stop is not None:
                _stopped(target, stop, post_done, rom_blocks, log, warnings)
                break
            now = clock()
            if now - resumed >= timeout:
                if not post_done:
                    warnings.append(f"SeaBIOS had not finished POST after {timeout:g} s: "
                                    "the boot may not have been followed to its end")
                break
            if post_done and now - last_change >= settle:
                break
        duration = clock() - resumed
        log_text = log.read_all() if log is not None else ""
        events = parse_bar_trace(log_text)
        if observer is not None:
            if target.is_active():
                observer.done(target, log_text)
            else:
                warnings.append("the guest had stopped: its pages could not be read")
    except BaseException:
        _destroy(target, quietly=True)  # the first error is the one to report
        raise
    _destroy(target, quietly=False)
    if traced and not events and rom_blocks:
        raise MeasureError(
            f"{target.name}: no BAR trace event in {target.log_path}, although the domain "
            f"has {_count(rom_blocks, 'ROM BAR')} to map ({', '.join(rom_blocks)}): its "
            "firmware never got as far as mapping them, so this is no measurement")
    # No event and no ROM BAR: a domain without PCI BARs (isapc, an empty virt); fine.
    if events and all(e.time is None for e in events):
        warnings.append("trace lines carry no timestamps (-msg timestamp=off): ROM BARs "
                        "counted only where a sample caught them")
    bars = bar_intervals(events)
    seen = _roms_seen(events)
    if events and seen < len(rom_blocks):
        warnings.append(f"the domain has {_count(rom_blocks, 'ROM BAR')} "
                        f"({', '.join(rom_blocks)}) but the firmware was seen mapping "
                        f"{seen}: the peak may be missing one")
    peak = boot_peak(samples, bars, ramblocks)
    counts = rom_counts(ramblocks)
    last = samples[-1].snapshot
    return Measurement(target.name, xml, True, peak.non_ram_bytes, last.guest_ram_bytes,
                       peak.parts, ramblocks, samples=len(samples), duration=duration,
                       pre_firmware_bytes=pre_firmware, final_bytes=last.non_ram_bytes,
                       roms=tuple(b for b in bars if b.is_rom and counts(b.device)),
                       warnings=tuple(warnings), notes=peak.notes)


def _stopped(target: Target, stop: Stop, post_done: bool, rom_blocks: tuple[str, ...],
             log: _LogTail | None, warnings: list[str]) -> None:
    """The guest stopped running: a failed measurement (MeasureError) unless its
    firmware had already programmed BARs, mapped every ROM BAR the domain has, and (for
    SeaBIOS) ended POST: then what it maps at boot was all seen."""
    events = parse_bar_trace(log.read_all()) if log is not None else ()
    if post_done and events and _roms_seen(events) >= len(rom_blocks):
        warnings.append(f"the guest stopped {stop.after:.1f} s after resume ("
                        f"{stop.describe()}), after its firmware had mapped every ROM BAR")
        return
    hint = (" KVM cannot run this firmware here; measure it under TCG: <domain type='qemu'>."
            if stop.kvm_failed else "")
    raise MeasureError(
        f"{target.name}: the guest stopped running {stop.after:.1f} s after resume, "
        f"before its firmware had mapped its devices ({stop.describe()}): no measurement; "
        f"QEMU's log: {target.log_path or 'not readable here'}.{hint}")


def _rom_blocks(ramblocks: tuple[RamBlock, ...]) -> tuple[str, ...]:
    """The ROM BARs QEMU made (pci_add_option_rom: a "<vmsd or type>.rom" RAM block
    under the device's path), e.g. 0000:00:03.0/virtio-net-pci.rom."""
    return tuple(b.name for b in ramblocks if _DEVICE_ROM.match(b.name))


def _roms_seen(events: tuple[BarEvent, ...]) -> int:
    """How many distinct ROM BARs the trace saw mapped."""
    return len({e.bdf for e in events if e.is_rom and e.added})


def _count(items: tuple[str, ...], what: str) -> str:
    return f"{len(items)} {what}" + ("" if len(items) == 1 else "s")


def _destroy(target: Target, *, quietly: bool) -> None:
    """Power the domain off: it may have shut off by itself (a crash) already."""
    try:
        if target.is_active():
            target.destroy()
    except MeasureError:
        if not quietly:
            raise


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


def _enable_events(target: Target, names: tuple[str, ...], warnings: list[str]) -> None:
    for ev in names:
        out = target.hmp(f"trace-event {ev} on").strip()
        if out:
            warnings.append(f"trace-event {ev}: {out[:120]}")


class _LogTail:
    """New bytes of the domain log since the measurement began (libvirt appends)."""

    def __init__(self, path: str | None, offset: int) -> None:
        self.path = path
        self.offset = offset
        self.seen = offset

    def grew(self) -> bool:
        size = log_size(self.path)
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
