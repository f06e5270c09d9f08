"""Guest memory: ``<memory>``, memory devices, ``<memtune>`` and ``<memoryBacking>``."""

from __future__ import annotations

from typing import NamedTuple

from ..support.errors import InputError
from ..support.units import MAX_MEMORY_BYTES, parse_scaled
from .xmlmap import Element, Kids, attr, first, first_attr_in, first_in, group, one, scaled


class MemoryDevice(NamedTuple):
    model: str  # dimm | nvdimm | virtio-pmem | virtio-mem | sgx-epc
    size: int  # bytes; for virtio-mem the maximum <size>, as libvirt counts it
    alias: str | None

    @property
    def label(self) -> str:
        return self.alias or self.model

    @classmethod
    def from_xml(cls, el: Element) -> MemoryDevice:
        model = attr(el, "model") or "dimm"
        size = scaled(first(el, "target/size"), what=f"<memory model='{model}'> <target><size>")
        if size is None:
            raise InputError(f"<memory model='{model}'> has no <target><size>")
        return cls(model=model, size=size, alias=attr(el, "name", "alias"))


class Memtune(NamedTuple):
    hard_limit: int | None = None  # bytes
    soft_limit: int | None = None
    swap_hard_limit: int | None = None

    @classmethod
    def from_xml(cls, blocks: list[Element] | None) -> Memtune:
        # ./memtune/hard_limit[1]: the first in any <memtune> block, as libvirt reads it.
        if not blocks:
            return NO_MEMTUNE
        return cls(
            hard_limit=scaled(first_in(blocks, "hard_limit"), what="<memtune><hard_limit>"),
            soft_limit=scaled(first_in(blocks, "soft_limit"), what="<memtune><soft_limit>"),
            swap_hard_limit=scaled(first_in(blocks, "swap_hard_limit"),
                                   what="<memtune><swap_hard_limit>"),
        )


class MemoryBacking(NamedTuple):
    locked: bool = False
    hugepages: bool = False
    source_type: str | None = None  # anonymous | file | memfd

    @classmethod
    def from_xml(cls, blocks: list[Element] | None) -> MemoryBacking:
        # boolean(./memoryBacking/locked): in any <memoryBacking> block.
        if not blocks:
            return NO_MEMORY_BACKING
        return cls(locked=first_in(blocks, "locked") is not None,
                   hugepages=first_in(blocks, "hugepages") is not None,
                   source_type=first_attr_in(blocks, "source", "type"))


# Shared defaults: frozen, and most domains have neither block.
NO_MEMTUNE = Memtune()
NO_MEMORY_BACKING = MemoryBacking()


def total_memory(root: Element, devices: tuple[MemoryDevice, ...],
                 top: Kids | None = None) -> int:
    """libvirt's virDomainDefGetMemoryTotal after post-parse.

    With NUMA cells, libvirt recomputes the total as the cells plus the memory devices
    and ignores ``<memory>``; otherwise ``<memory>`` is the total and already includes
    the devices (virDomainDefPostParseMemory).
    """
    top = group(root) if top is None else top
    hotplug = sum(d.size for d in devices)
    cells = [cell for cpu in top.get("cpu") or () for numa in cpu if numa.tag == "numa"
             for cell in numa if cell.tag == "cell"]
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
    total = scaled(one(top, "memory"), what="<memory>")
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
