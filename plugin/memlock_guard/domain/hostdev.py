"""``<hostdev>``: which ones are VFIO devices that pin guest memory, and through which backend.

libvirt 12.1 lets a PCI hostdev use iommufd instead of a VFIO type1 container
(``<driver iommufd='yes'/>``); libvirt 12.2 adds the domain-level ``<iommufd
enabled='yes' fdgroup='NAME'/>``, which applies to every hostdev not overridden with
``<driver iommufd='no'/>``, and with ``fdgroup`` takes the /dev/iommu file descriptor
from whoever associated it (virDomainFDAssociate) instead of opening it itself.
Shapes from libvirt's NEWS (12.1.0, 12.2.0) and KubeVirt's IOMMUFD enhancement
(docs/sources.md section 13).
"""

from __future__ import annotations

from typing import NamedTuple

from .controller import pci_number
from .rom import Rom
from .xmlmap import Element, attr, first_in, group, one, switch


class Hostdev(NamedTuple):
    mode: str | None  # subsystem | capabilities
    type: str | None  # pci | mdev | usb | scsi | scsi_host
    driver: str | None  # <driver name='vfio'>; absent means vfio on any current libvirt
    source: str  # a short human label: the PCI address or mdev uuid
    alias: str | None
    rom: Rom
    has_guest_address: bool = True  # False in hand-written XML: libvirt assigns one
    guest_bus: int | None = None  # <address type='pci' bus=>: the guest PCI bus it sits on
    iommufd: bool | None = None  # <driver iommufd='yes|no'>; None: the domain decides

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
        guest = one(kids, "address")
        driver = one(kids, "driver")
        return cls(
            mode=attr(el, "mode") or "subsystem",
            type=attr(el, "type"),
            driver=attr(driver, "name"),
            source=_source_label(el, first_in(kids.get("source"), "address")),
            alias=attr(one(kids, "alias"), "name"),
            rom=Rom.from_xml(one(kids, "rom")),
            has_guest_address=guest is not None,
            guest_bus=guest_pci_bus(guest),
            iommufd=switch(attr(driver, "iommufd")),
        )


def guest_pci_bus(address: Element | None) -> int | None:
    """The bus of a PCI guest ``<address>`` (None: none, or not a PCI address)."""
    if address is None or address.get("type") != "pci":
        return None
    return pci_number(address.get("bus") or "0")


def pci_address(addr: Element | None) -> str | None:
    """A host PCI ``<address domain= bus= slot= function=>`` as sysfs names it,
    ``0001:01:00.0``; None when it is not one."""
    if addr is None or addr.get("bus") is None:
        return None
    get = addr.get
    try:
        d, b, s, f = (int(get(k, "0"), 0) for k in ("domain", "bus", "slot", "function"))
    except ValueError:
        return None
    return f"{d:04x}:{b:02x}:{s:02x}.{f:x}"


def _source_label(el: Element, addr: Element | None) -> str:
    if addr is not None and addr.get("bus") is not None:
        return pci_address(addr) or ":".join(
            addr.get(k, "0") for k in ("domain", "bus", "slot", "function"))
    uuid = attr(addr, "uuid")
    return uuid or attr(el, "type") or "hostdev"
