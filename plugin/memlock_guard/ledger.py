"""The exposure ledger: one item per source of bytes that VFIO will pin, and what it costs.

Pure data and arithmetic. ``Exposure`` is what an estimator reports (one mapping, as
one container sees it); the engine turns it into a ``LedgerItem`` by adding how many
containers pin it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


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


class Mode(StrEnum):
    STRICT = "strict"  # every mapped page is charged (Linux >= 6.2, iommufd)
    TOLERANT = "tolerant"  # zero-fill pages are not charged, up to an allowance
    AUTO = "auto"  # decide from the host


@dataclass(frozen=True, slots=True)
class Exposure:
    source: str  # e.g. "video0 qxl-vga ram BAR0"
    bytes: int
    backing: Backing
    readonly: bool
    kind: Kind
    transient: bool = False  # mapped only while firmware enables it (boot time)
    # None: pinned by every container. Set only for a mapping some containers skip.
    containers: int | None = None
    note: str | None = None  # an assumption the number rests on (e.g. a default size)


@dataclass(frozen=True, slots=True)
class LedgerItem:
    source: str
    bytes: int
    backing: Backing
    readonly: bool
    kind: Kind
    transient: bool
    containers: int
    note: str | None = None

    @property
    def charged(self) -> int:
        return self.bytes * self.containers


@dataclass(frozen=True, slots=True)
class Ledger:
    items: tuple[LedgerItem, ...]
    containers: int  # VFIO containers / iommufd IOASes that each map the whole space
    container_reasons: tuple[str, ...]  # why that many, for explain
    # Third-party plugins left out of this ledger, each with why (issue: on-error).
    excluded_plugins: tuple[str, ...] = ()

    def required(self, mode: Mode, zero_page_allowance: int | None = None) -> int:
        """Bytes the kernel charges to RLIMIT_MEMLOCK, no margin.

        ``tolerant`` forgives zero-fill pages up to ``zero_page_allowance`` bytes
        (None: all of them, as kernels before 6.2 did).
        """
        strict = sum(i.charged for i in self.items)
        if mode is Mode.STRICT:
            return strict
        if mode is Mode.TOLERANT:
            zero = self.charged_of(Backing.ZERO_FILL)
            forgiven = zero if zero_page_allowance is None else min(zero, zero_page_allowance)
            return strict - forgiven
        raise ValueError("resolve auto to strict or tolerant first")

    def charged_of(self, backing: Backing) -> int:
        return sum(i.charged for i in self.items if i.backing is backing)

    def bytes_of(self, kind: Kind) -> int:
        """Bytes of one kind as a single container maps them (no multiplication)."""
        return sum(i.bytes for i in self.items if i.kind is kind)

    @property
    def non_ram_bytes(self) -> int:
        return sum(i.bytes for i in self.items if i.kind is not Kind.RAM)

    def biggest(self, n: int) -> tuple[LedgerItem, ...]:
        return tuple(sorted(self.items, key=lambda i: -i.charged)[:n])
