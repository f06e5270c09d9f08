"""``<disk>``: NVMe (QEMU's own VFIO driver) and vhost-vDPA disks pin guest memory."""

from __future__ import annotations

from typing import NamedTuple

from .xmlmap import Element, attr


class Disk(NamedTuple):
    type: str | None
    device: str | None
    target: str | None
    nvme_in_chain: bool  # libvirt's virStorageSourceChainHasNVMe

    @property
    def is_vhostvdpa(self) -> bool:
        return self.type == "vhostvdpa"

    @property
    def label(self) -> str:
        return self.target or self.type or "disk"

    @classmethod
    def from_xml(cls, el: Element) -> Disk:
        disk_type = attr(el, "type")
        target = backing = None
        for c in el:  # one pass: ./target[1] and ./backingStore[1]
            t = c.tag
            if t == "target":
                if target is None:
                    target = c
            elif t == "backingStore" and backing is None:
                backing = c
        return cls(
            type=disk_type,
            device=attr(el, "device"),
            target=attr(target, "dev"),
            nvme_in_chain=disk_type == "nvme" or _chain_has_nvme(backing),
        )


def _chain_has_nvme(store: Element | None) -> bool:
    """virStorageSourceChainHasNVMe over the disk's source chain: each <backingStore>
    holds the next as its first <backingStore> child (a <mirror>'s chain is another
    source, which libvirt does not count). Bounded by the parser's depth limit."""
    while store is not None:
        if store.get("type") == "nvme":
            return True
        store = next(store.iterchildren("backingStore"), None)
    return False
