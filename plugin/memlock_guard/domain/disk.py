"""``<disk>``: NVMe (QEMU's own VFIO driver) and vhost-vDPA disks pin guest memory."""

from __future__ import annotations

from typing import NamedTuple

from .xmlmap import Element, attr, firsts


class Disk(NamedTuple):
    type: str | None
    device: str | None
    target: str | None
    nvme_in_chain: bool  # libvirt's virStorageSourceChainHasNVMe
    # Sources of type vhostvdpa in the disk's chain: libvirt's nvdpa counts each one.
    vdpa_sources: int = 0

    @property
    def label(self) -> str:
        return self.target or self.type or "disk"

    @classmethod
    def from_xml(cls, el: Element) -> Disk:
        disk_type = attr(el, "type")
        target, backing = firsts(el, _READ)
        chain = [disk_type, *_backing_types(backing)]
        return cls(
            type=disk_type,
            device=attr(el, "device"),
            target=attr(target, "dev"),
            nvme_in_chain="nvme" in chain,
            vdpa_sources=chain.count("vhostvdpa"),
        )


_READ = ("target", "backingStore")


def _backing_types(store: Element | None) -> list[str | None]:
    """The type of each source in the disk's backing chain, as libvirt walks it for
    virStorageSourceChainHasNVMe and nvdpa: each <backingStore> holds the next as its
    first <backingStore> child (a <mirror>'s chain is another source, not counted).
    Bounded by the parser's depth limit."""
    types = []
    while store is not None:
        types.append(store.get("type"))
        store = next(store.iterchildren("backingStore"), None)
    return types
