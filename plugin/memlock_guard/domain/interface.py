"""``<interface>``: VFIO (type='hostdev'), vDPA, or an emulated NIC with an option ROM."""

from __future__ import annotations

from typing import NamedTuple

from .rom import Rom
from .xmlmap import Element, attr, firsts


class Interface(NamedTuple):
    type: str | None  # network | bridge | hostdev | vdpa | user | ...
    model: str | None  # virtio | e1000 | e1000e | rtl8139 | ...
    mac: str | None
    alias: str | None
    address_type: str | None  # pci | ccw | virtio-mmio | spapr-vio | ...
    rom: Rom

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
        model, mac, alias, address, rom = firsts(el, _READ)
        return cls(
            type=attr(el, "type"),
            model=_model(attr(model, "type")),
            mac=attr(mac, "address"),
            alias=attr(alias, "name"),
            address_type=attr(address, "type"),
            rom=Rom.from_xml(rom),
        )


_READ = ("model", "mac", "alias", "address", "rom")


def _model(value: str | None) -> str | None:
    # libvirt matches NIC models case-insensitively (virDomainNetSetModelString uses
    # STRCASEEQ): model type='ViRtIo' is virtio-net, with efi-virtio.rom.
    return value.lower() if value else None
