"""Guest memory: ``<memory>``, memory devices, ``<memtune>`` and ``<memoryBacking>``."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError
from ..units import MAX_MEMORY_BYTES, parse_scaled
from .xmlmap import Element, attr, first_attr, scaled


@dataclass(frozen=True, slots=True)
class MemoryDevice:
    model: str  # dimm | nvdimm | virtio-pmem | virtio-mem | sgx-epc
    size: int  # bytes; for virtio-mem the maximum <size>, as libvirt counts it
    alias: str | None

    @property
    def label(self) -> str:
        return self.alias or self.model

    @classmethod
    def from_xml(cls, el: Element) -> MemoryDevice:
        model = attr(el, "model") or "dimm"
        size = scaled(el.find("target/size"), what=f"<memory model='{model}'> <target><size>")
        if size is None:
            raise InputError(f"<memory model='{model}'> has no <target><size>")
        return cls(model=model, size=size, alias=attr(el, "name", "alias"))


@dataclass(frozen=True, slots=True)
class Memtune:
    hard_limit: int | None = None  # bytes
    soft_limit: int | None = None
    swap_hard_limit: int | None = None

    @classmethod
    def from_domain(cls, root: Element) -> Memtune:
        # ./memtune/hard_limit[1]: the first in any <memtune> block, as libvirt reads it.
        return cls(
            hard_limit=scaled(root.find("memtune/hard_limit"), what="<memtune><hard_limit>"),
            soft_limit=scaled(root.find("memtune/soft_limit"), what="<memtune><soft_limit>"),
            swap_hard_limit=scaled(root.find("memtune/swap_hard_limit"),
                                   what="<memtune><swap_hard_limit>"),
        )


@dataclass(frozen=True, slots=True)
class MemoryBacking:
    locked: bool = False
    hugepages: bool = False
    source_type: str | None = None  # anonymous | file | memfd

    @classmethod
    def from_domain(cls, root: Element) -> MemoryBacking:
        # boolean(./memoryBacking/locked): in any <memoryBacking> block.
        return cls(locked=root.find("memoryBacking/locked") is not None,
                   hugepages=root.find("memoryBacking/hugepages") is not None,
                   source_type=first_attr(root, "memoryBacking/source", "type"))


def total_memory(root: Element, devices: tuple[MemoryDevice, ...]) -> int:
    """libvirt's virDomainDefGetMemoryTotal after post-parse.

    With NUMA cells, libvirt recomputes the total as the cells plus the memory devices
    and ignores ``<memory>``; otherwise ``<memory>`` is the total and already includes
    the devices (virDomainDefPostParseMemory).
    """
    hotplug = sum(d.size for d in devices)
    cells = root.findall("cpu/numa/cell")
    if cells:
        numa = 0
        for i, cell in enumerate(cells):
            raw = cell.get("memory")
            if raw is None:
                raise InputError(f"<numa><cell> #{i} has no memory= attribute")
            numa += parse_scaled(raw, cell.get("unit"), what=f"<numa><cell> #{i} memory=")
        if numa == 0:
            raise InputError("<numa> cells add up to zero memory")
        return _bounded(numa + hotplug)
    total = scaled(root.find("memory"), what="<memory>")
    if total is None:
        raise InputError("domain has no <memory> element and no <numa> cells")
    if total == 0:
        raise InputError("<memory> is zero")
    if hotplug >= total:
        raise InputError("memory devices add up to more than <memory>, which is the total")
    return total


def _bounded(total: int) -> int:
    # Each size is already below libvirt's 2**53 KiB; their sum must be too, or every
    # later product (x containers, + margins) leaves the range libvirt can express.
    if total > MAX_MEMORY_BYTES:
        raise InputError("<numa> cells and memory devices add up to more memory than "
                         "libvirt can express (2^53 KiB)")
    return total
