"""``<disk>``: NVMe (QEMU's own VFIO driver) and vhost-vDPA disks pin guest memory."""

from __future__ import annotations

from typing import NamedTuple

from .xmlmap import Element, attr, first_in


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
        return cls(
            type=disk_type,
            device=attr(el, "device"),
            target=attr(first_in([el], "target"), "dev"),
            nvme_in_chain=disk_type == "nvme" or _chain_has_nvme(el),
        )


def _chain_has_nvme(el: Element) -> bool:
    # Backing stores nest: <backingStore type='nvme'><backingStore .../></backingStore>;
    # bounded by the parser's depth limit.
    return any(b.get("type") == "nvme" for b in el.iter("backingStore"))
