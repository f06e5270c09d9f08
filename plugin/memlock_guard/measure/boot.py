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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..support.units import MiB
from .mappings import Snapshot, looks_like_seabios, post_finished, snapshot
from .peak import BarInterval, Sample, bar_intervals, boot_peak, parts_of, rom_counts
from .qemu_text import (
    MeasureError,
    RamBlock,
    guest_ram_regions,
    parse_bar_trace,
    parse_memdevs,
    parse_ramblocks,
)
from .target import Target

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
        log_text = log.read_all() if log is not None else ""
        events = parse_bar_trace(log_text)
        if observer is not None:
            observer.done(target, log_text)
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
