"""``<controller>``: only pSeries PCI host bridges (PHBs) matter, for libvirt's ppc64 formula."""

from __future__ import annotations

from typing import NamedTuple

from .xmlmap import Element, attr, first_in


class Controller(NamedTuple):
    type: str | None
    model: str | None
    target_model: str | None  # <model name='spapr-pci-host-bridge'/>
    bus_index: int | None = None  # <controller index=>: for PCI, the bus number it provides

    @property
    def is_pseries_phb(self) -> bool:
        """libvirt's virDomainControllerIsPSeriesPHB."""
        return (self.type == "pci" and self.model == "pci-root"
                and self.target_model == "spapr-pci-host-bridge")

    @classmethod
    def from_xml(cls, el: Element) -> Controller:
        return cls(type=attr(el, "type"), model=attr(el, "model"),
                   target_model=attr(first_in([el], "model"), "name"),
                   bus_index=pci_number(el.get("index")))


def pci_number(raw: str | None) -> int | None:
    """A PCI bus/index number as libvirt reads it (strtoul base 0: 0x.. hex, 0.. octal),
    or None when absent or not a bus number (libvirt itself refuses those)."""
    if raw is None:
        return None
    s = raw.strip().lower()
    try:
        if s.startswith("0x"):
            n = int(s[2:], 16)
        elif len(s) > 1 and s.startswith("0"):
            n = int(s[1:], 8)
        else:
            n = int(s, 10)
    except ValueError:
        return None
    return n if 0 <= n <= 0xFF else None
