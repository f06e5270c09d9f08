"""``<interface>``: VFIO (type='hostdev'), vDPA, or an emulated NIC with an option ROM."""

from __future__ import annotations

from typing import NamedTuple

from .hostdev import guest_pci_bus, pci_address
from .rom import Rom
from .xmlmap import Element, attr, first_in, firsts


class Interface(NamedTuple):
    type: str | None  # network | bridge | hostdev | vdpa | user | ...
    model: str | None  # virtio | e1000 | e1000e | rtl8139 | ...
    mac: str | None
    alias: str | None
    address_type: str | None  # pci | ccw | virtio-mmio | spapr-vio | ...
    rom: Rom
    guest_bus: int | None = None  # <address type='pci' bus=>
    source_pci: str | None = None  # type='hostdev': the host device, 0000:01:00.0

    @property
    def is_vfio(self) -> bool:
        return self.type == "hostdev"

    @property
    def is_vdpa(self) -> bool:
        return self.type == "vdpa"

    @property
    def label(self) -> str:
        return self.alias or self.mac or (self.type or "interface")

    @classmethod
    def from_xml(cls, el: Element) -> Interface:
        model, mac, alias, address, rom, source = firsts(el, _READ)
        hostdev = attr(el, "type") == "hostdev"
        return cls(
            type=attr(el, "type"),
            model=_model(attr(model, "type")),
            mac=attr(mac, "address"),
            alias=attr(alias, "name"),
            address_type=attr(address, "type"),
            rom=Rom.from_xml(rom),
            guest_bus=guest_pci_bus(address),
            source_pci=pci_address(first_in([source], "address"))
            if hostdev and source is not None else None,
        )


_READ = ("model", "mac", "alias", "address", "rom", "source")


def _model(value: str | None) -> str | None:
    # libvirt matches NIC models case-insensitively (virDomainNetSetModelString uses
    # STRCASEEQ): model type='ViRtIo' is virtio-net, with efi-virtio.rom.
    return value.lower() if value else None
