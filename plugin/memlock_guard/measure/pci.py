"""``info pci``: each PCI device's QEMU id, its BARs, and its QEMU device path.

The device path is what QEMU prefixes a device's RAM blocks with (``info ramblock``:
``0000:00:02.0:00.0/virtio-net-pci.rom``; pcibus_get_dev_path in hw/pci/pci.c): the
root bus's domain and bus, then slot.function of every bridge down to the device.
``info pci`` numbers buses as the guest's firmware programmed them ("secondary bus N"
of each bridge), which is also what the ``pci_update_mappings_*`` trace prints; before
the firmware ran every secondary bus reads 0, so paths are resolved after boot.

Pure functions on captured text (tests/data/qemu/).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

UNMAPPED = (1 << 64) - 1  # a BAR the guest has not (or no longer) placed
PCI_DOMAIN = "0000"  # QEMU's x86 and virt machines have one PCI domain (no pxb here)


@dataclass(frozen=True, slots=True)
class Bar:
    index: int  # 0-5; 6 is the expansion ROM (PCI_ROM_SLOT)
    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size - 1

    def holds(self, start: int, size: int) -> bool:
        return self.start <= start and start + size - 1 <= self.end


@dataclass(frozen=True, slots=True)
class PciDevice:
    bus: int
    slot: int
    function: int
    qemu_id: str  # the -device id, which libvirt sets to the device's alias; "" if none
    secondary_bus: int | None  # bridges only
    bars: tuple[Bar, ...]  # memory BARs placed in the address space now
    path: str | None = None  # QEMU device path; None when the bus tree does not resolve

    @property
    def bdf(self) -> str:
        """bus:slot.function as QEMU's trace prints it (guest bus numbers)."""
        return f"{self.bus:02x}:{self.slot:02x}.{self.function}"


_DEV = re.compile(r"^\s*Bus\s+(\d+), device\s+(\d+), function (\d+):\s*$")
_BAR = re.compile(r"^\s*BAR(\d+): (?:32|64) bit (?:prefetchable )?memory at "
                  r"0x([0-9a-f]+) \[0x([0-9a-f]+)\]")
_SECONDARY = re.compile(r"^\s*secondary bus (\d+)\.?\s*$")
_ID = re.compile(r'^\s*id "(.*)"\s*$')


@dataclass(slots=True)
class _Reading:
    bus: int
    slot: int
    function: int
    qemu_id: str = ""
    secondary_bus: int | None = None
    bars: list[Bar] = field(default_factory=list)


def parse_info_pci(text: str) -> tuple[PciDevice, ...]:
    """Every device of ``info pci``, with its device path resolved where possible."""
    raw: list[_Reading] = []
    for line in text.splitlines():
        m = _DEV.match(line)
        if m:
            raw.append(_Reading(int(m.group(1)), int(m.group(2)), int(m.group(3))))
            continue
        if not raw:
            continue
        cur = raw[-1]
        if m := _BAR.match(line):
            start, last = int(m.group(2), 16), int(m.group(3), 16)
            if start != UNMAPPED and last >= start:
                cur.bars.append(Bar(int(m.group(1)), start, last - start + 1))
        elif m := _SECONDARY.match(line):
            cur.secondary_bus = int(m.group(1))
        elif m := _ID.match(line):
            cur.qemu_id = m.group(1)
    devices = [PciDevice(r.bus, r.slot, r.function, r.qemu_id, r.secondary_bus,
                         tuple(r.bars)) for r in raw]
    return tuple(_with_paths(devices))


def _with_paths(devices: Sequence[PciDevice]) -> Iterable[PciDevice]:
    # The bridge whose secondary bus is N; bus 0 is the root. A secondary bus of 0 (not
    # programmed yet) or claimed twice resolves nothing.
    owners: dict[int, list[PciDevice]] = {}
    for d in devices:
        if d.secondary_bus:
            owners.setdefault(d.secondary_bus, []).append(d)

    def path(d: PciDevice, depth: int = 0) -> str | None:
        here = f"{d.slot:02x}.{d.function}"
        if d.bus == 0:
            return f"{PCI_DOMAIN}:00:{here}"
        parent = owners.get(d.bus, [])
        if len(parent) != 1 or depth > 32:
            return None
        up = path(parent[0], depth + 1)
        return None if up is None else f"{up}:{here}"

    for d in devices:
        yield PciDevice(d.bus, d.slot, d.function, d.qemu_id, d.secondary_bus, d.bars,
                        path(d))


def by_path(devices: Iterable[PciDevice]) -> dict[str, PciDevice]:
    return {d.path: d for d in devices if d.path is not None}


def by_bdf(devices: Iterable[PciDevice]) -> dict[str, PciDevice]:
    return {d.bdf: d for d in devices}


def bar_holding(devices: Iterable[PciDevice], start: int,
                size: int) -> tuple[PciDevice, Bar] | None:
    """The device BAR a guest-physical range lies in (BARs never overlap)."""
    for d in devices:
        for b in d.bars:
            if b.holds(start, size):
                return d, b
    return None


def block_device_path(block: str) -> str | None:
    """``0000:00:02.0:00.0`` of ``0000:00:02.0:00.0/virtio-net-pci.rom``; None if not a
    PCI device's block."""
    m = re.match(r"^([0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7](?::[0-9a-f]{2}\.[0-7])*)/",
                 block)
    return m.group(1) if m else None
