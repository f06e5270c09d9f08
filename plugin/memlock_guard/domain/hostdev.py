"""``<hostdev>``: which ones are VFIO devices that pin guest memory."""

from __future__ import annotations

from typing import NamedTuple

from .rom import Rom
from .xmlmap import Element, attr, first_in, group, one


class Hostdev(NamedTuple):
    mode: str | None  # subsystem | capabilities
    type: str | None  # pci | mdev | usb | scsi | scsi_host
    driver: str | None  # <driver name='vfio'>; absent means vfio on any current libvirt
    source: str  # a short human label: the PCI address or mdev uuid
    alias: str | None
    rom: Rom
    has_guest_address: bool = True  # False in hand-written XML: libvirt assigns one

    @property
    def is_vfio(self) -> bool:
        """libvirt's virHostdevIsVFIODevice: PCI with the vfio backend, or mdev."""
        if self.mode != "subsystem":
            return False
        if self.type == "mdev":
            return True
        return self.type == "pci" and self.driver in (None, "vfio")

    @classmethod
    def from_xml(cls, el: Element) -> Hostdev:
        kids = group(el)
        return cls(
            mode=attr(el, "mode") or "subsystem",
            type=attr(el, "type"),
            driver=attr(one(kids, "driver"), "name"),
            source=_source_label(el, first_in(kids.get("source"), "address")),
            alias=attr(one(kids, "alias"), "name"),
            rom=Rom.from_xml(one(kids, "rom")),
            has_guest_address="address" in kids,
        )


def _source_label(el: Element, addr: Element | None) -> str:
    if addr is not None and addr.get("bus") is not None:
        get = addr.get
        parts = (get("domain", "0"), get("bus", "0"), get("slot", "0"), get("function", "0"))
        try:
            d, b, s, f = (int(p, 0) for p in parts)
            return f"{d:04x}:{b:02x}:{s:02x}.{f:x}"
        except ValueError:
            return ":".join(parts)
    uuid = attr(addr, "uuid")
    return uuid or attr(el, "type") or "hostdev"
