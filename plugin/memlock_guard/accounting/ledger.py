"""The exposure ledger: one item per source of bytes that VFIO will pin, and what it costs.

Pure data and arithmetic. ``Exposure`` is what an estimator reports (one mapping, as
one container sees it); the engine turns it into a ``LedgerItem`` by adding how many
containers pin it.

Not everything is mapped at once. VFIO unmaps (and uncharges) a region when it leaves
the guest's memory map, so the charge that must fit under the limit is the *peak*
over boot. Measured with QEMU 7.2 (docs/sources.md): firmware enables one option-ROM
BAR, copies it and disables it before the next, so ROM BARs share the "boot-rom"
window and only the largest counts; SeaBIOS's isa-bios alias and pc.rom vanish when it
shadows itself into RAM, before any BAR is programmed ("pre-firmware" window). Every
window is a phase of its own; items without a window are always mapped.

Items marked ``hotplug`` are not mapped at start at all: they are what a later hotplug
can add (memory up to ``<maxMemory>``). They never count in the requirement at start,
which decides whether a VM may start (libvirt would start it); they count in the
recommended hard_limit, so that a limit memlock-guard writes leaves room for them.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import NamedTuple

from .backend import Backend
from .modes import Mode


class Backing(StrEnum):
    ANON = "anon"  # guest RAM, memory devices: written, so always real pages
    FILE_ROM = "file-rom"  # the part of a ROM that QEMU filled from a file
    ZERO_FILL = "zero-fill"  # ROM pages never written: the shared zero page before 6.2
    DEVICE_RAM = "device-ram"  # video RAM and other device memory mapped read-write


class Kind(StrEnum):
    RAM = "ram"
    FIRMWARE = "firmware"
    VIDEO = "video"
    OPTION_ROM = "option-rom"
    OTHER = "other"


class Window(StrEnum):
    BOOT_ROM = "boot-rom"  # option-ROM BARs: mapped one region at a time during boot
    PRE_FIRMWARE = "pre-firmware"  # mapped together until the firmware shadows itself


# The join key between a ledger item and what QEMU maps (``Exposure.mapping``), stable
# across releases because both halves are QEMU's own names:
#   "pc.bios", "isa-bios", "pc.rom"  machine regions, named as QEMU names them;
#   "ALIAS/barN"                     BAR N of the PCI device whose QEMU id is ALIAS (libvirt's
#                                    device alias); N = 6 is the expansion ROM (PCI_ROM_SLOT);
#   "ALIAS/vga-window"               that device's RAM seen through the legacy VGA window.
# Several items may share one key (a ROM BAR's file part and its tail); their bytes add
# up to the mapping's size.
MACHINE_MAPPINGS = ("pc.bios", "isa-bios", "pc.rom")
ROM_BAR = 6  # PCI_ROM_SLOT
VGA_WINDOW = "vga-window"


# QEMU's id_wellformed() (util/id.c): a letter, then letters, digits, '-', '.', '_'.
_MAPPING = re.compile(r"(?:pc\.bios|isa-bios|pc\.rom|[A-Za-z][A-Za-z0-9._-]{0,127}"
                      r"/(?:bar[0-6]|vga-window))")


def device_mapping(alias: str | None, what: int | str) -> str | None:
    """``ALIAS/barN`` for a BAR index, ``ALIAS/WHAT`` otherwise; None when the alias is
    missing or could not be a QEMU device id."""
    key = f"{alias}/bar{what}" if isinstance(what, int) else f"{alias}/{what}"
    return key if alias and valid_mapping(key) else None


def valid_mapping(key: str) -> bool:
    return _MAPPING.fullmatch(key) is not None


class Exposure(NamedTuple):
    source: str  # e.g. "video0 qxl-vga ram BAR0"
    bytes: int
    backing: Backing
    readonly: bool
    kind: Kind
    # None: always mapped. Else the boot-time window it is mapped in; within a window,
    # items of the same ``region`` are mapped together and regions one at a time.
    window: Window | None = None
    region: str | None = None
    # None: pinned by every container. Set only for a mapping some containers skip.
    containers: int | None = None
    note: str | None = None  # an assumption the number rests on (e.g. a default size)
    # Which QEMU mapping the bytes are part of, so a measurement can be joined to the
    # item (see MAPPING_KEYS below); None when unknown (e.g. a device without an alias).
    mapping: str | None = None
    # True: not mapped at start; what hotplug may add later (see the module docstring).
    hotplug: bool = False

    @property
    def transient(self) -> bool:
        return self.window is not None


class LedgerItem(NamedTuple):
    source: str
    bytes: int
    backing: Backing
    readonly: bool
    kind: Kind
    window: Window | None
    region: str | None
    containers: int
    note: str | None = None
    mapping: str | None = None
    hotplug: bool = False

    @property
    def transient(self) -> bool:
        return self.window is not None

    @property
    def charged(self) -> int:
        """What this item costs while it is mapped."""
        return self.bytes * self.containers


class Ledger(NamedTuple):
    items: tuple[LedgerItem, ...]
    containers: int  # VFIO containers / iommufd IOASes that each map the whole space
    container_reasons: tuple[str, ...]  # why that many, for explain
    # Third-party plugins left out of this ledger, each with why (issue: on-error).
    excluded_plugins: tuple[str, ...] = ()
    # Which kernel interface pins (VFIO type1 / iommufd) and whom it charges.
    backend: Backend | None = None

    def required(self, mode: Mode, zero_page_allowance: int | None = None) -> int:
        """Peak bytes the kernel charges to RLIMIT_MEMLOCK over boot, no margin.

        ``tolerant`` forgives zero-fill pages, at most ``zero_page_allowance`` bytes of
        those mapped at any one time (None: all of them, as kernels before 6.2 did).
        """
        if mode is Mode.AUTO:
            raise ValueError("resolve auto to strict or tolerant first")
        strict, tolerant = self.requirements(zero_page_allowance)
        return strict if mode is Mode.STRICT else tolerant

    def requirements(self, zero_page_allowance: int | None = None) -> tuple[int, int]:
        """(strict, tolerant) in one pass over the items."""
        strict, forgiving_all = self._peaks()
        if zero_page_allowance is None:
            return strict, forgiving_all
        # Per phase: charge - min(zero, A); the max over phases of that equals
        # max(peak without zero-fill, strict peak - A).
        return strict, max(forgiving_all, strict - zero_page_allowance)

    def _peaks(self) -> tuple[int, int]:
        """The peak charge with and without zero-fill pages."""
        always = always_nz = 0
        regions: dict[tuple[Window, str], list[int]] = {}
        zero_fill = Backing.ZERO_FILL
        for i in self.items:
            if i.hotplug:
                continue
            charge = i.bytes * i.containers
            nz = 0 if i.backing is zero_fill else charge
            if i.window is None:
                always += charge
                always_nz += nz
            else:
                key = (i.window, i.region or i.source)
                acc = regions.get(key)
                if acc is None:
                    regions[key] = [charge, nz]
                else:
                    acc[0] += charge
                    acc[1] += nz
        if not regions:
            return always, always_nz
        return (always + max(a[0] for a in regions.values()),
                always_nz + max(a[1] for a in regions.values()))

    @property
    def hotplug_charge(self) -> int:
        """What the hotplug items cost once plugged, in every container."""
        return sum(i.charged for i in self.items if i.hotplug)

    def one_container(self, zero_page_allowance: int | None = None, *,
                      hotplug: bool = False) -> tuple[int, int]:
        """(strict, tolerant) peak of one more container that maps the whole address
        space, as a VFIO device added behind a vIOMMU does; with ``hotplug``, memory up to
        maxMemory included. Every item counts once, also one an estimator limited to
        fewer containers (a new container may map it too: never under-count)."""
        items = tuple(i._replace(containers=1, hotplug=False) for i in self.items
                      if hotplug or not i.hotplug)
        return Ledger(items, 1, ()).requirements(zero_page_allowance)

    def peak_region(self) -> tuple[Window, str, int] | None:
        """The boot-time region that sets the peak (strict), if any."""
        regions: dict[tuple[Window, str], int] = {}
        for i in self.items:
            if i.window is not None and not i.hotplug:
                key = (i.window, i.region or i.source)
                regions[key] = regions.get(key, 0) + i.charged
        if not regions:
            return None
        (window, region), charge = max(regions.items(), key=lambda kv: kv[1])
        return window, region, charge

    @property
    def non_ram_bytes(self) -> int:
        return sum(i.bytes for i in self.items if i.kind is not Kind.RAM)

    def biggest(self, n: int) -> tuple[LedgerItem, ...]:
        """The ``n`` items that cost most at start (hotplug items are not mapped then)."""
        return tuple(sorted((i for i in self.items if not i.hotplug),
                            key=lambda i: -i.charged)[:n])
