"""Which pages of a QEMU RAM block were ever written: /proc/PID/pagemap and kpageflags.

``/proc/PID/pagemap`` holds one little-endian u64 per virtual 4 KiB page
(Documentation/admin-guide/mm/pagemap.rst): bit 63 present, 62 swapped, 61 file page
or shared anonymous (also set for the huge zero page), 56 exclusively mapped (Linux
4.2+), bits 0-54 the page frame number, which reads as 0 without CAP_SYS_ADMIN (4.2+).
``/proc/kpageflags`` holds one u64 per PFN; bit 24 KPF_ZERO_PAGE (Linux 4.0, commit
56873f43abdc) marks the shared zero page and the huge zero page
(include/uapi/linux/kernel-page-flags.h). Reading either walks the page tables only:
it faults nothing in and changes nothing.

A page of a private anonymous RAM block that QEMU never wrote is either not present,
or, once something only read it (firmware scanning a ROM through KVM), mapped to the
shared zero page: both are *zero-fill*, the pages tolerant accounting forgives. A
swapped page and any other present page were written. When PFNs are hidden, a present
page mapped exclusively was written (the zero page is never exclusive); any other
present page could be the zero page, a KSM page or one shared after fork: *unknown*,
never guessed.

The decoding is pure (``classify``/``count`` on captured bytes); the readers at the
end open the /proc files.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

PAGE = 4096
ENTRY = 8  # bytes per pagemap / kpageflags entry
PM_PFN = (1 << 55) - 1
PM_EXCLUSIVE = 1 << 56
PM_FILE = 1 << 61
PM_SWAP = 1 << 62
PM_PRESENT = 1 << 63
KPF_NOPAGE = 1 << 20
KPF_KSM = 1 << 21
KPF_THP = 1 << 22
KPF_ZERO_PAGE = 1 << 24
KPAGEFLAGS = "/proc/kpageflags"
CHUNK_PAGES = 1 << 17  # read pagemap 1 MiB of entries at a time (512 MiB of memory)
MAP_RUNS = 24  # runs kept in a page map string

# Page states, as the page map string shows them.
WRITTEN, NOT_PRESENT, ZERO_PAGE, SWAPPED, UNKNOWN = "W", "-", "Z", "S", "?"


def entries(raw: bytes) -> tuple[int, ...]:
    """The u64 entries of a pagemap or kpageflags read (a partial entry is dropped)."""
    n = len(raw) // ENTRY
    return struct.unpack(f"<{n}Q", raw[:n * ENTRY])


def pfn(entry: int) -> int:
    """The page frame number of a present page; 0 when hidden or not present."""
    return entry & PM_PFN if entry & PM_PRESENT else 0


def classify(entry: int, flags: int | None) -> str:
    """One page's state from its pagemap entry and, for a present page whose PFN is
    visible, its kpageflags (None when unknown)."""
    if not entry & PM_PRESENT:
        return SWAPPED if entry & PM_SWAP else NOT_PRESENT
    if pfn(entry) and flags is not None:
        if flags & KPF_NOPAGE:
            return UNKNOWN
        return ZERO_PAGE if flags & KPF_ZERO_PAGE else WRITTEN
    return WRITTEN if entry & PM_EXCLUSIVE else UNKNOWN


@dataclass(frozen=True, slots=True)
class PageCount:
    """The states of a range of pages."""

    pages: int
    written: int  # present real pages, and swapped ones
    not_present: int
    zero_page: int  # present, the shared (or huge) zero page
    unknown: int
    thp: int = 0  # written pages that are part of a transparent huge page
    ksm: int = 0  # written pages merged by KSM
    pfns_visible: bool | None = None  # None: no present page to tell
    map: str = ""  # run-length page map, e.g. "W10 -6"

    @property
    def zero_fill(self) -> int:
        return self.not_present + self.zero_page


def count(pagemap: Sequence[int], flags_of: Callable[[int], int | None]) -> PageCount:
    """States of the pages of ``pagemap`` entries; ``flags_of(pfn)`` gives kpageflags."""
    states: list[str] = []
    thp = ksm = 0
    visible: bool | None = None
    for e in pagemap:
        flags = None
        if e & PM_PRESENT:
            frame = pfn(e)
            visible = bool(frame) if visible is None else visible or bool(frame)
            flags = flags_of(frame) if frame else None
        state = classify(e, flags)
        if state == WRITTEN and flags is not None:
            thp += bool(flags & KPF_THP)
            ksm += bool(flags & KPF_KSM)
        states.append(state)
    return PageCount(len(states), states.count(WRITTEN) + states.count(SWAPPED),
                     states.count(NOT_PRESENT), states.count(ZERO_PAGE),
                     states.count(UNKNOWN), thp, ksm, visible, rle(states))


def rle(states: Iterable[str]) -> str:
    """``W10 -6``: the page states run by run (at most MAP_RUNS runs, then "…")."""
    runs: list[tuple[str, int]] = []
    for s in states:
        if runs and runs[-1][0] == s:
            runs[-1] = (s, runs[-1][1] + 1)
        else:
            runs.append((s, 1))
    text = " ".join(f"{s}{n}" for s, n in runs[:MAP_RUNS])
    return text + (" …" if len(runs) > MAP_RUNS else "")


# -- smaps: QEMU's RAM-block mappings ------------------------------------------------------

_VMA = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) [0-9a-f]+ \S+ (\d+)\s*(.*)$")


def ram_block_vmas(smaps: str) -> tuple[tuple[int, int], ...]:
    """(start, size) of every VMA that looks like a QEMU RAM block: anonymous, private,
    with both ``dc`` (MADV_DONTFORK) and ``hg`` (MADV_HUGEPAGE) in VmFlags, which
    ram_block_add() sets on every block it allocates (softmmu/physmem.c, QEMU 7.2)."""
    out = []
    cur: tuple[int, int, str, str] | None = None
    for line in smaps.splitlines():
        m = _VMA.match(line)
        if m:
            cur = (int(m.group(1), 16), int(m.group(2), 16), m.group(3), m.group(5))
            continue
        if line.startswith("VmFlags:") and cur is not None:
            start, end, perms, path = cur
            flags = line.split()[1:]
            if "dc" in flags and "hg" in flags and perms.endswith("p") and not path:
                out.append((start, end - start))
            cur = None
    return tuple(out)


# -- reading /proc -------------------------------------------------------------------------


class PagemapError(OSError):
    """pagemap or smaps could not be read (no such process, no permission)."""


def read_pagemap(pid: int, hva: int, size: int) -> tuple[int, ...]:
    """The pagemap entries of [hva, hva + size) in process ``pid``."""
    pages = -(-size // PAGE)
    out: list[int] = []
    try:
        fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise PagemapError(e.errno, f"/proc/{pid}/pagemap: {e.strerror}") from None
    try:
        first = hva // PAGE
        for at in range(0, pages, CHUNK_PAGES):
            n = min(CHUNK_PAGES, pages - at)
            raw = os.pread(fd, n * ENTRY, (first + at) * ENTRY)
            if len(raw) != n * ENTRY:
                raise PagemapError(0, f"/proc/{pid}/pagemap: short read at {hva:#x}")
            out += entries(raw)
    except PagemapError:
        raise
    except OSError as e:
        raise PagemapError(e.errno, f"/proc/{pid}/pagemap: {e.strerror}") from None
    finally:
        os.close(fd)
    return tuple(out)


def read_kpageflags(pfns: Iterable[int], path: str = KPAGEFLAGS) -> dict[int, int]:
    """kpageflags of each PFN, read run by run; {} when the file cannot be read."""
    wanted = sorted(set(p for p in pfns if p))
    flags: dict[int, int] = {}
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return flags
    try:
        i = 0
        while i < len(wanted):
            j = i
            while j + 1 < len(wanted) and wanted[j + 1] == wanted[j] + 1 \
                    and j + 1 - i < CHUNK_PAGES:
                j += 1
            raw = os.pread(fd, (j - i + 1) * ENTRY, wanted[i] * ENTRY)
            for k, value in enumerate(entries(raw)):
                flags[wanted[i] + k] = value
            i = j + 1
    except OSError:
        return {}
    finally:
        os.close(fd)
    return flags


def scan(pid: int, hva: int, size: int) -> PageCount:
    """The page states of [hva, hva + size) in process ``pid``."""
    pm = read_pagemap(pid, hva, size)
    flags = read_kpageflags(pfn(e) for e in pm)
    return count(pm, flags.get)


def read_smaps(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/smaps") as f:
            return f.read()
    except OSError as e:
        raise PagemapError(e.errno, f"/proc/{pid}/smaps: {e.strerror}") from None
