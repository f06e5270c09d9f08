"""``<rom bar= file= enabled=>`` as it appears on hostdevs and interfaces."""

from __future__ import annotations

from typing import NamedTuple

from .xmlmap import Element, attr, switch


class Rom(NamedTuple):
    bar: bool | None = None  # <rom bar='on|off'>
    file: str | None = None  # <rom file='/path'>
    enabled: bool | None = None  # <rom enabled='no'> drops the ROM entirely

    @property
    def suppressed(self) -> bool:
        """True when QEMU gets no ROM BAR at all (romfile='' or rombar=0)."""
        return self.enabled is False or self.bar is False

    @classmethod
    def from_xml(cls, el: Element | None) -> Rom:
        """The ``<rom>`` element itself (None: the device has none)."""
        if el is None:
            return NO_ROM
        return cls(bar=switch(attr(el, "bar")), file=attr(el, "file") or None,
                   enabled=switch(attr(el, "enabled")))


NO_ROM = Rom()  # shared: frozen, and most devices have no <rom>
