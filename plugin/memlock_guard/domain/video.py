"""``<video><model type= vram= ram= vgamem= vram64= heads= primary=>``."""

from __future__ import annotations

from dataclasses import dataclass

from .xmlmap import Element, address_type, attr, count, kib_attr, switch


@dataclass(frozen=True, slots=True)
class Video:
    model: str | None  # vga | cirrus | qxl | bochs | virtio | vmvga | ramfb | none | ...
    vram: int | None  # bytes, as libvirt's KiB attributes converted
    ram: int | None
    vgamem: int | None
    vram64: int | None
    heads: int | None
    primary: bool  # resolved: the explicit primary, else the first video
    accel3d: bool
    alias: str | None
    address_type: str | None

    @property
    def label(self) -> str:
        return self.alias or (self.model or "video")

    @classmethod
    def from_xml(cls, el: Element, *, primary: bool) -> Video:
        model = el.find("model")
        what = "<video><model>"
        return cls(
            model=attr(model, "type"),
            vram=kib_attr(model, "vram", what=what),
            ram=kib_attr(model, "ram", what=what),
            vgamem=kib_attr(model, "vgamem", what=what),
            vram64=kib_attr(model, "vram64", what=what),
            heads=count(model, "heads", what=f"{what} heads="),
            primary=primary,
            accel3d=switch(attr(model, "accel3d", "acceleration")) is True,
            alias=attr(el, "name", "alias"),
            address_type=address_type(el),
        )


def videos_from_xml(els: list[Element]) -> tuple[Video, ...]:
    """The ``<video>`` elements of every ``<devices>`` block, in document order."""
    # libvirt makes the one marked primary='yes' the primary, else the first.
    marked = [i for i, e in enumerate(els) if switch(attr(e, "primary", "model")) is True]
    primary_index = marked[0] if marked else 0
    return tuple(Video.from_xml(e, primary=(i == primary_index)) for i, e in enumerate(els))
