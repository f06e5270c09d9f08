"""``<controller>``: only pSeries PCI host bridges (PHBs) matter, for libvirt's ppc64 formula."""

from __future__ import annotations

from dataclasses import dataclass

from .xmlmap import Element, attr


@dataclass(frozen=True, slots=True)
class Controller:
    type: str | None
    model: str | None
    target_model: str | None  # <model name='spapr-pci-host-bridge'/>

    @property
    def is_pseries_phb(self) -> bool:
        """libvirt's virDomainControllerIsPSeriesPHB."""
        return (self.type == "pci" and self.model == "pci-root"
                and self.target_model == "spapr-pci-host-bridge")

    @classmethod
    def from_xml(cls, el: Element) -> Controller:
        return cls(type=attr(el, "type"), model=attr(el, "model"),
                   target_model=attr(el, "name", "model"))
