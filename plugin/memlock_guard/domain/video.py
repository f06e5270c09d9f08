"""``<video><model type= vram= ram= vgamem= vram64= heads= primary=>``.

Read as libvirt's post-parse leaves it (checked against the libvirt 10.7 test corpus,
where each ``*-latest.xml`` is libvirt's own parse of the input file):
- a ``<video>`` without a model type gets the default model of the machine
  (qemuDomainDefaultVideoDevice): vga on ppc64; virtio on ARM/RISC-V/LoongArch
  ``virt`` machines and s390; else cirrus (vga on a QEMU built without cirrus-vga,
  which host facts do not tell us; cirrus is upstream's and the smaller, by 12 MiB);
- a domain with ``<graphics>`` but no ``<video>`` gets one such default video.
Sizes stay as written; libvirt's power-of-two rounding of ``ram``/``vram``
(virDomainVideoDefPostParse) is applied where a size is used (estimators/video.py).
"""

from __future__ import annotations

from typing import NamedTuple

from .xmlmap import Element, attr, count, first_in, firsts, kib_attr, switch

_VIRTIO_DEFAULT_ARCHES = ("armv6l", "armv7l", "armv7b", "aarch64", "riscv32", "riscv64",
                          "loongarch64")


class Video(NamedTuple):
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
    def from_xml(cls, el: Element, *, primary: bool, default: str = "cirrus") -> Video:
        model, alias, address = firsts(el, _READ)
        what = "<video><model>"
        return cls(
            model=_model_type(attr(model, "type"), default),
            vram=kib_attr(model, "vram", what=what),
            ram=kib_attr(model, "ram", what=what),
            vgamem=kib_attr(model, "vgamem", what=what),
            vram64=kib_attr(model, "vram64", what=what),
            heads=count(model, "heads", what=f"{what} heads="),
            primary=primary,
            accel3d=switch(attr(model, "accel3d", "acceleration")) is True,
            alias=attr(alias, "name"),
            address_type=attr(address, "type"),
        )


_READ = ("model", "alias", "address")


def post_parse_videos(els: list[Element], *, arch: str = "x86_64", machine: str | None = None,
                    graphics: bool = False) -> tuple[Video, ...]:
    """The ``<video>`` elements of every ``<devices>`` block, in document order.

    With none but a ``<graphics>``, the one video libvirt adds (virDomainDefPostParse).
    """
    default = default_model(arch, machine)
    if not els:
        if not graphics:
            return ()
        return (Video(model=default, vram=None, ram=None, vgamem=None, vram64=None, heads=None,
                      primary=True, accel3d=False, alias=None, address_type=None),)
    # libvirt makes the one marked primary='yes' the primary, else the first.
    marked = [i for i, e in enumerate(els)
              if switch(attr(first_in([e], "model"), "primary")) is True]
    primary_index = marked[0] if marked else 0
    return tuple(Video.from_xml(e, primary=(i == primary_index), default=default)
                 for i, e in enumerate(els))


def default_model(arch: str, machine: str | None) -> str:
    """libvirt's qemuDomainDefaultVideoDevice (qemu_domain.c, 10.x)."""
    if arch in ("ppc64", "ppc64le"):
        return "vga"
    m = machine or ""
    if arch in ("s390", "s390x") or (
            arch in _VIRTIO_DEFAULT_ARCHES and (m == "virt" or m.startswith("virt-"))):
        return "virtio"
    return "cirrus"


def _model_type(value: str | None, default: str) -> str:
    # An absent or empty type, or 'default', is VIR_DOMAIN_VIDEO_TYPE_DEFAULT.
    return default if not value or value == "default" else value
