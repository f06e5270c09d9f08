"""The frozen ``Domain``: everything in a domain XML that matters for locked memory."""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from .. import xmlsafe
from ..errors import InputError
from .controller import Controller
from .disk import Disk
from .firmware import Firmware, Machine
from .hostdev import Hostdev
from .interface import Interface
from .memory import MemoryBacking, MemoryDevice, Memtune, total_memory
from .video import Video, videos_from_xml
from .xmlmap import Element, attr, count, scaled, text

POLICY_NS = "urn:memlock-guard:policy:1"


@dataclass(frozen=True, slots=True)
class Domain:
    name: str
    uuid: str | None
    type: str  # kvm | qemu | ...
    arch: str  # x86_64 | i686 | ppc64 | ppc64le | aarch64 | s390x | ...
    machine: Machine
    memory: int  # bytes: libvirt's memory total, memory devices included
    max_memory: int | None  # <maxMemory>, bytes
    vcpus: int
    iothreads: int
    memory_devices: tuple[MemoryDevice, ...]
    memtune: Memtune
    memory_backing: MemoryBacking
    iommu: str | None  # <iommu model=...>, None when absent
    hostdevs: tuple[Hostdev, ...]
    interfaces: tuple[Interface, ...]
    disks: tuple[Disk, ...]
    videos: tuple[Video, ...]
    firmware: Firmware
    controllers: tuple[Controller, ...]
    graphics: tuple[str, ...]  # <graphics type=...>
    has_tpm: bool
    launch_security: str | None  # sev | sev-snp | s390-pv | tdx ...
    # Our own <metadata> children, serialised, keyed by local name (policy, applied).
    metadata: tuple[tuple[str, bytes], ...] = field(default=())

    @property
    def is_x86(self) -> bool:
        return self.arch in ("x86_64", "i686")

    @property
    def is_ppc64(self) -> bool:
        return self.arch in ("ppc64", "ppc64le")

    @property
    def vfio_devices(self) -> tuple[str, ...]:
        """Labels of every VFIO device: PCI/mdev hostdevs and ``<interface type='hostdev'>``."""
        return tuple([h.alias or h.source for h in self.hostdevs if h.is_vfio]
                     + [i.label for i in self.interfaces if i.is_vfio])

    @property
    def nvme_disks(self) -> tuple[str, ...]:
        return tuple(d.label for d in self.disks if d.nvme_in_chain)

    @property
    def vdpa_devices(self) -> tuple[str, ...]:
        """libvirt's nvdpa: ``<interface type='vdpa'>`` and every vhostvdpa disk."""
        return tuple([i.label for i in self.interfaces if i.is_vdpa]
                     + [d.label for d in self.disks if d.is_vhostvdpa])

    def metadata_element(self, local_name: str) -> bytes | None:
        for key, value in self.metadata:
            if key == local_name:
                return value
        return None


def parse_domain(data: bytes) -> Domain:
    """Parse untrusted domain XML bytes into a Domain; InputError on anything wrong."""
    return domain_from_element(xmlsafe.parse(data, what="domain XML"))


def domain_from_element(root: Element) -> Domain:
    if not isinstance(root.tag, str) or root.tag != "domain":
        tag = root.tag if isinstance(root.tag, str) else "?"
        raise InputError(f"root element is <{tag[:40]}>, not <domain>")
    devices = root.find("devices")
    os_el = root.find("os")
    memory_devices = tuple(MemoryDevice.from_xml(e) for e in _all(devices, "memory"))
    vcpus = count(root.find("vcpu"), "", what="<vcpu>")
    return Domain(
        name=text(root, "name") or "(unnamed)",
        uuid=text(root, "uuid"),
        type=attr(root, "type") or "kvm",
        arch=attr(os_el, "arch", "type") or "x86_64",
        machine=Machine(attr(os_el, "machine", "type")),
        memory=total_memory(root, memory_devices),
        max_memory=scaled(root.find("maxMemory"), what="<maxMemory>"),
        vcpus=vcpus if vcpus else 1,
        iothreads=count(root.find("iothreads"), "", what="<iothreads>") or 0,
        memory_devices=memory_devices,
        memtune=Memtune.from_xml(root.find("memtune")),
        memory_backing=MemoryBacking.from_xml(root.find("memoryBacking")),
        iommu=_iommu(devices),
        hostdevs=tuple(Hostdev.from_xml(e) for e in _all(devices, "hostdev")),
        interfaces=tuple(Interface.from_xml(e) for e in _all(devices, "interface")),
        disks=tuple(Disk.from_xml(e) for e in _all(devices, "disk")),
        videos=videos_from_xml(devices),
        firmware=Firmware.from_xml(os_el),
        controllers=tuple(Controller.from_xml(e) for e in _all(devices, "controller")),
        graphics=tuple(e.get("type") or "?" for e in _all(devices, "graphics")),
        has_tpm=bool(_all(devices, "tpm")),
        launch_security=attr(root, "type", "launchSecurity"),
        metadata=_our_metadata(root.find("metadata")),
    )


def _all(devices: Element | None, tag: str) -> list[Element]:
    return [] if devices is None else devices.findall(tag)


def _iommu(devices: Element | None) -> str | None:
    if devices is None:
        return None
    el = devices.find("iommu")
    return None if el is None else (el.get("model") or "intel")


def _our_metadata(md: Element | None) -> tuple[tuple[str, bytes], ...]:
    if md is None:
        return ()
    out = []
    for child in md:
        if isinstance(child.tag, str) and child.tag.startswith("{" + POLICY_NS + "}"):
            out.append((etree.QName(child).localname, etree.tostring(child)))
    return tuple(out)
