"""The frozen ``Domain``: everything in a domain XML that matters for locked memory."""

from __future__ import annotations

from typing import NamedTuple

from lxml import etree

from ..support import xmlsafe
from ..support.defaults import POLICY_NS
from ..support.errors import InputError
from .controller import Controller, pci_number
from .disk import Disk
from .firmware import Firmware, Machine, Os
from .hostdev import Hostdev
from .interface import Interface
from .memory import MemoryBacking, MemoryDevice, Memtune, total_memory
from .nova import NovaInstance
from .video import Video, post_parse_videos
from .xmlmap import (
    Element,
    Kids,
    attr,
    count,
    every,
    first,
    group,
    group_into,
    one,
    scaled,
    switch,
    text,
)

# Work and output grow with the devices (a QXL card alone is five ledger items), so a
# hostile XML within the parser's element budget could still cost seconds and hundreds
# of MB. QEMU runs out of PCI slots long before this; libvirt's own tests stay in the
# dozens.
MAX_DEVICES = 10_000


class Domain(NamedTuple):
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
    controllers: tuple[Controller, ...]  # read for ppc64 only: see from_xml
    graphics: tuple[str, ...]  # <graphics type=...>
    has_tpm: bool
    launch_security: str | None  # sev | sev-snp | s390-pv | tdx ...
    # Our own <metadata> children, serialised, keyed by local name (policy, applied).
    metadata: tuple[tuple[str, bytes], ...] = ()
    # The guest PCI bus of every device with a PCI address (<address type='pci' bus=>),
    # one entry per device, sorted: on pSeries every bus is a PHB, libvirt adds the
    # missing ones, and a bus a device sits on can no longer adopt an isolation group.
    pci_buses: tuple[int, ...] = ()
    # Derived once at parse, as every rule asks for them (see _pinning_devices):
    # labels of every VFIO device (PCI/mdev hostdevs and <interface type='hostdev'>),
    # of NVMe disks, and of libvirt's nvdpa (<interface type='vdpa'>, vhostvdpa disks).
    vfio_devices: tuple[str, ...] = ()
    nvme_disks: tuple[str, ...] = ()
    vdpa_devices: tuple[str, ...] = ()
    # The OpenStack Nova instance this domain is, from <metadata><nova:instance>.
    nova: NovaInstance | None = None
    # <maxMemory slots=N>: libvirt refuses maxMemory without slots and the other way
    # round (virDomainDefPostParseMemory), and a memory device beyond N.
    memory_slots: int | None = None
    # The domain-level <iommufd enabled= fdgroup=> (libvirt >= 12.2; hostdev.py): plain
    # fields, not a record, as every domain the hook judges carries them.
    iommufd_enabled: bool | None = None
    iommufd_fdgroup: str | None = None  # the fd comes from outside (virDomainFDAssociate)
    # <seclabel model='dac'><label>: the uid QEMU runs as (iommufd user accounting).
    # libvirt runs QEMU as qemu.conf's user unless the label is static; it writes the
    # generated "+UID:+GID" (type='dynamic') into the live XML at start, in
    # qemuProcessPrepareDomain, after the prepare hook ran: the hook sees only a static one.
    dac_label: str | None = None
    dac_static: bool = False

    @property
    def is_x86(self) -> bool:
        return self.arch in ("x86_64", "i686")

    @property
    def is_ppc64(self) -> bool:
        return self.arch in ("ppc64", "ppc64le")

    def has_viommu(self, libvirt_version: tuple[int, int, int] | None = None) -> bool:
        """Whether the guest gets an emulated IOMMU: an ``<iommu>``, or the one libvirt
        >= 10.10 adds by itself to an x86 q35 domain with more than 255 vCPUs
        (qemuDomainDefAddDefaultDevices). None: the newest libvirt's rules."""
        if self.iommu is not None:
            return True
        return ((libvirt_version is None or libvirt_version >= (10, 10, 0)) and self.is_x86
                and self.machine.family == "q35" and self.vcpus > 255)

    @property
    def hotpluggable_memory(self) -> int:
        """Bytes of memory that can still be hot-added: up to ``<maxMemory>``.

        libvirt's qemuDomainDefValidateMemoryHotplug (qemu_domain.c, 9.0): every memory
        device takes a slot (nmems <= slots), and initial memory plus every device's
        size stays within maxMemory. ``memory`` already holds the devices present
        (virtio-mem at its maximum size), so what is left is maxMemory - memory, or
        nothing when every slot is taken.
        """
        if not self.max_memory:
            return 0
        if self.memory_slots is not None and len(self.memory_devices) >= self.memory_slots:
            return 0
        return max(0, self.max_memory - self.memory)

    @property
    def iommufd_devices(self) -> tuple[str, ...]:
        """Labels of the VFIO devices bound through iommufd rather than a type1 container:
        PCI hostdevs with ``<driver iommufd='yes'/>``, or under a domain-level
        ``<iommufd enabled='yes'/>`` unless they say ``iommufd='no'``."""
        default = bool(self.iommufd_enabled)
        return tuple(h.alias or h.source for h in self.hostdevs
                     if h.is_vfio and h.type == "pci"
                     and (h.iommufd if h.iommufd is not None else default))

    @property
    def dac_user(self) -> str | None:
        """The user part of the DAC label: "+64055" (a number) or a name; None unset."""
        if not self.dac_label:
            return None
        return self.dac_label.split(":", 1)[0].strip() or None

    @property
    def named_files(self) -> tuple[str, ...]:
        """Absolute paths the domain names whose sizes the ledger uses (the firmware
        loader, every ``<rom file>``), once each, in document order."""
        paths = [self.firmware.loader_path]
        paths += [i.rom.file for i in self.interfaces] + [h.rom.file for h in self.hostdevs]
        return tuple(dict.fromkeys(p for p in paths if p and p.startswith("/")))

    @property
    def host_pci_devices(self) -> tuple[str, ...]:
        """Host PCI addresses of the PCI devices passed through (hostdevs and
        ``<interface type='hostdev'>``): libvirt isolates them by IOMMU group."""
        found = [h.source for h in self.hostdevs if h.is_vfio and h.type == "pci"]
        found += [i.source_pci for i in self.interfaces if i.is_vfio and i.source_pci]
        return tuple(dict.fromkeys(found))

    def metadata_element(self, local_name: str) -> bytes | None:
        for key, value in self.metadata:
            if key == local_name:
                return value
        return None

    @classmethod
    def from_xml(cls, root: Element) -> Domain:
        """Map a parsed ``<domain>``; every lookup follows libvirt's XPath (see xmlmap)."""
        if not isinstance(root.tag, str) or root.tag != "domain":
            tag = root.tag if isinstance(root.tag, str) else "?"
            raise InputError(f"root element is <{_clip(tag)}>, not <domain>")
        top = group(root)  # every child of <domain> by name, in document order
        os_blocks = top.get("os")
        arch_attr, machine, firmware = Os.from_xml(os_blocks)
        arch = arch_attr or "x86_64"
        ppc64 = arch.startswith("ppc64")
        # One pass over every <devices> block: ./devices/TAG for each tag we map, in
        # document order across blocks. The parser drops comments and processing
        # instructions, so every child is an element and len() counts ./devices/*.
        blocks = top.get("devices") or ()
        n_devices = sum(map(len, blocks))
        if n_devices > MAX_DEVICES:
            raise InputError(f"domain lists {n_devices} devices, more than the {MAX_DEVICES} "
                             "memlock-guard accepts")
        devices: Kids = {}
        mapped = _MAPPED if ppc64 else _MAPPED_NOT_PPC64
        for block in blocks:  # tags matched in C: no Python object for the rest
            group_into(devices, block.iterchildren(*mapped))

        def dev(tag: str) -> list[Element]:
            return devices.get(tag, _NONE)

        memory_devices = tuple(MemoryDevice.from_xml(e) for e in dev("memory"))
        vcpus = count(one(top, "vcpu"), "", what="<vcpu>")
        if vcpus == 0:
            raise InputError("<vcpu> is zero")  # libvirt refuses it too
        graphics = tuple(e.get("type") or "?" for e in dev("graphics"))
        iommu = dev("iommu")
        hostdevs = tuple(Hostdev.from_xml(e) for e in dev("hostdev"))
        interfaces = tuple(Interface.from_xml(e) for e in dev("interface"))
        disks = tuple(Disk.from_xml(e) for e in dev("disk"))
        vfio, nvme, vdpa = _pinning_devices(hostdevs, interfaces, disks)
        metadata = one(top, "metadata")
        max_memory = one(top, "maxMemory")
        iommufd = one(top, "iommufd")
        dac = _dac_label(top.get("seclabel"))
        return cls(
            name=text(one(top, "name")) or "(unnamed)",
            uuid=text(one(top, "uuid")),
            type=attr(root, "type") or "kvm",
            arch=arch,
            machine=Machine(machine),
            memory=total_memory(root, memory_devices, top),
            max_memory=scaled(max_memory, what="<maxMemory>"),
            vcpus=vcpus or 1,
            iothreads=count(one(top, "iothreads"), "", what="<iothreads>") or 0,
            memory_devices=memory_devices,
            memtune=Memtune.from_xml(top.get("memtune")),
            memory_backing=MemoryBacking.from_xml(top.get("memoryBacking")),
            iommu=(iommu[0].get("model") or "intel") if iommu else None,
            hostdevs=hostdevs,
            interfaces=interfaces,
            disks=disks,
            videos=post_parse_videos(dev("video"), arch=arch, machine=machine,
                                   graphics=bool(graphics)),
            firmware=firmware,
            controllers=tuple(Controller.from_xml(e) for e in dev("controller")),
            graphics=graphics,
            has_tpm=bool(dev("tpm")),
            launch_security=attr(one(top, "launchSecurity"), "type"),
            metadata=_our_metadata(metadata),
            # Only libvirt's pSeries formula needs them (every bus there is a PHB).
            pci_buses=_pci_buses(root) if ppc64 else (),
            vfio_devices=vfio,
            nvme_disks=nvme,
            vdpa_devices=vdpa,
            nova=NovaInstance.from_metadata(metadata),
            memory_slots=count(max_memory, "slots", what="<maxMemory slots=>"),
            iommufd_enabled=switch(attr(iommufd, "enabled")),
            iommufd_fdgroup=attr(iommufd, "fdgroup") or None,
            dac_label=dac[0],
            dac_static=dac[1],
        )


def parse_domain(data: bytes) -> Domain:
    """Parse untrusted domain XML bytes into a Domain; InputError on anything wrong."""
    return Domain.from_xml(xmlsafe.parse(data, what="domain XML"))


def _pinning_devices(hostdevs: tuple[Hostdev, ...], interfaces: tuple[Interface, ...],
                     disks: tuple[Disk, ...]) -> tuple[tuple[str, ...], ...]:
    """(VFIO, NVMe, vDPA) device labels: computed once, as the container count, both
    baselines and the messages all ask for them."""
    vfio = ([h.alias or h.source for h in hostdevs if h.is_vfio]
            + [i.label for i in interfaces if i.is_vfio])
    nvme = [d.label for d in disks if d.nvme_in_chain]
    vdpa = ([i.label for i in interfaces if i.is_vdpa]
            + [d.label for d in disks for _ in range(d.vdpa_sources)])
    return tuple(vfio), tuple(nvme), tuple(vdpa)


# The device elements the model reads (each gathered across <devices> blocks).
_MAPPED_NOT_PPC64 = ("memory", "hostdev", "interface", "disk", "video", "graphics", "tpm",
                     "iommu")
# Only libvirt's pSeries formula reads controllers (its PHBs); a q35 domain can list
# dozens of pcie-root-ports, so other architectures skip them.
_MAPPED = (*_MAPPED_NOT_PPC64, "controller")
_NONE: list[Element] = []


def _dac_label(blocks: list[Element] | None) -> tuple[str | None, bool]:
    """(label, static) of the first top-level ``<seclabel model='dac'>``."""
    for el in blocks or ():
        if el.get("model") == "dac":
            label = text(first(el, "label"))
            return label, el.get("type") == "static"
    return None, False


def _pci_buses(root: Element) -> tuple[int, ...]:
    buses = [pci_number(a.get("bus") or "0") for a in every(root, "devices/*/address")
             if a.get("type") == "pci"]
    return tuple(sorted(b for b in buses if b is not None))


def _clip(text: str, limit: int = 40) -> str:
    text = "".join(c if c.isprintable() else "?" for c in text[: limit + 1])
    return text if len(text) <= limit else text[:limit] + "…"


def _our_metadata(md: Element | None) -> tuple[tuple[str, bytes], ...]:
    if md is None:
        return ()
    out = []
    for child in md:
        if isinstance(child.tag, str) and child.tag.startswith("{" + POLICY_NS + "}"):
            out.append((etree.QName(child).localname, etree.tostring(child)))
    return tuple(out)
