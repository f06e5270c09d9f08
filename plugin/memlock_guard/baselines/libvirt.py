"""libvirt's RLIMIT_MEMLOCK for a domain, exactly, by libvirt version.

qemuDomainGetMemLockLimitBytes() in src/qemu/qemu_domain.c (see docs/sources.md):
1. <memtune><hard_limit> (when "set": non-zero and below libvirt's unlimited) wins;
2. <memoryBacking><locked/> means unlimited;
3. ppc64 + KVM has its own formula (getPPC64MemLockLimitBytes);
4. else factor x memory total + 1 GiB, where the factor grew over the versions:
   - before 8.7.0: any VFIO hostdev, NVMe disk or vDPA NIC -> factor 1;
   - 8.7.0: nvdpa + (nvfio ? (vIOMMU ? nvfio : 1) : 0), NVMe disks forgotten;
   - 9.3.0: + nnvme; vhost-vDPA disks count as vDPA devices.
   A result of 0 means libvirt leaves the inherited limit alone.
libvirt >= 10.10 adds an <iommu> by itself for more than 255 vCPUs on x86 q35.
At start libvirt aligns memory sizes (qemuDomainAlignMemorySizes): 1 MiB on x86,
256 MiB on ppc64; ``at_start`` applies that, as the real limit does.
"""

from __future__ import annotations

from typing import NamedTuple

from ..domain import Domain
from ..support.units import GiB, KiB, MiB, round_up

# VIR_DOMAIN_MEMORY_PARAM_UNLIMITED (INT64_MAX >> 10), in the units libvirt keeps it.
LIBVIRT_UNLIMITED = 9007199254740991
LATEST = (12, 2, 0)  # the newest libvirt whose rules this module knows (unchanged since 9.3)


class LibvirtLimit(NamedTuple):
    version: tuple[int, int, int]
    bytes: int | None  # None: unlimited
    source: str  # hard_limit | locked | ppc64 | formula | none
    explanation: str

    @property
    def unlimited(self) -> bool:
        return self.bytes is None


def memory_total(domain: Domain, *, at_start: bool) -> int:
    """virDomainDefGetMemoryTotal, after qemuDomainAlignMemorySizes when ``at_start``."""
    if not at_start:
        return domain.memory
    align = 256 * MiB if domain.is_ppc64 else 1 * MiB
    devices = sum(d.size for d in domain.memory_devices)
    initial = round_up(domain.memory - devices, align)
    return initial + sum(round_up(d.size, align if d.model != "virtio-mem" else 2 * MiB)
                         for d in domain.memory_devices)


def pseries_phbs(domain: Domain) -> int:
    """PHBs a pSeries domain has once libvirt has assigned addresses.

    Every PCI bus of a pSeries guest is a PHB (a pci-root controller): the default one
    (index 0) even when none is listed, the listed ones, and every bus number up to the
    highest that a controller index or a device address names (libvirt fills the gaps).
    On top, one for each PCI hostdev or ``<interface type='hostdev'>`` still without a
    guest address: libvirt isolates each IOMMU group on a PHB of its own. We cannot see
    IOMMU groups here, so each such device counts as its own group (functions of one
    multi-function device may in fact share one). Not modelled: the extra PHB libvirt
    adds when more than 31 devices fill a bus.
    """
    pci = [c for c in domain.controllers if c.type == "pci"]
    phb_like = [c for c in pci if c.model in (None, "pci-root")
                and c.target_model in (None, "spapr-pci-host-bridge")]
    other = {c.bus_index for c in pci if c.bus_index is not None and c not in phb_like}
    top = max([c.bus_index for c in pci if c.bus_index is not None] + list(domain.pci_buses),
              default=0)
    buses = sum(1 for i in range(top + 1) if i not in other)
    listed = max(len(phb_like), buses)
    pending = sum(1 for h in domain.hostdevs
                  if h.is_vfio and h.type == "pci" and not h.has_guest_address)
    pending += sum(1 for i in domain.interfaces if i.is_vfio and i.address_type is None)
    return listed + pending


def libvirt_limit(domain: Domain, version: tuple[int, int, int] | None = None, *,
                  at_start: bool = True,
                  nvlink2_bridges: tuple[str, ...] = ()) -> LibvirtLimit:
    v = version or LATEST
    hard = domain.memtune.hard_limit
    if hard and hard // KiB < LIBVIRT_UNLIMITED:  # virMemoryLimitIsSet
        return LibvirtLimit(v, hard, "hard_limit", "<memtune><hard_limit> is set")
    if domain.memory_backing.locked:
        return LibvirtLimit(v, None, "locked", "<memoryBacking><locked/>: unlimited")
    if domain.is_ppc64 and domain.type == "kvm":
        return _ppc64(domain, v, at_start, nvlink2_bridges)
    mem = memory_total(domain, at_start=at_start)
    nvfio = len(domain.vfio_devices)
    nnvme = len(domain.nvme_disks)
    nets_vdpa = sum(1 for i in domain.interfaces if i.is_vdpa)
    nvdpa = len(domain.vdpa_devices) if v >= (9, 3, 0) else nets_vdpa
    if v < (8, 7, 0):
        if v < (7, 2, 0):
            nvdpa = 0
        if nvfio or nnvme or nvdpa:
            return LibvirtLimit(v, mem + GiB, "formula",
                                "memory + 1 GiB (libvirt < 8.7: one factor for any device)")
        return _none(v)
    iommu = domain.has_viommu(v)
    factor = nvdpa + ((nvfio if iommu else 1) if nvfio else 0)
    parts = []
    if nvfio:
        parts.append(f"{nvfio} VFIO (vIOMMU: one each)" if iommu
                     else f"{nvfio} VFIO (one shared container)")
    if v >= (9, 3, 0):
        factor += nnvme
        if nnvme:
            parts.append(f"{nnvme} NVMe")
    if nvdpa:
        parts.append(f"{nvdpa} vDPA")
    if factor == 0:
        return _none(v)
    return LibvirtLimit(v, factor * mem + GiB, "formula",
                        f"{factor} x memory + 1 GiB ({', '.join(parts)})")


def _none(v: tuple[int, int, int]) -> LibvirtLimit:
    return LibvirtLimit(v, 0, "none", "no VFIO, NVMe or vDPA device: libvirt sets no limit")


def _ppc64(domain: Domain, v: tuple[int, int, int], at_start: bool,
           nvlink2_bridges: tuple[str, ...]) -> LibvirtLimit:
    # All in KiB, integer division, exactly as getPPC64MemLockLimitBytes().
    n_phb = pseries_phbs(domain)
    memory = memory_total(domain, at_start=at_start) // KiB
    max_memory = (domain.max_memory // KiB) if domain.max_memory else memory
    if at_start and domain.max_memory:
        max_memory = round_up(domain.max_memory, 256 * MiB) // KiB
    base = max_memory // 128 + 4096 * n_phb + 8192
    nvlink2 = any(h.is_vfio and h.type == "pci" and h.source in nvlink2_bridges
                  for h in domain.hostdevs)
    passthrough = 0
    why = f"ppc64: maxMemory/128 + 4 MiB x {n_phb} PHB + 8 MiB"
    if nvlink2:
        passthrough = max_memory + 128 * (1 << 30) // 512 * n_phb + 8192
        why += " + NVLink2 term"
    elif (domain.vfio_devices or domain.nvme_disks
          or any(i.is_vdpa for i in domain.interfaces)):
        # qemuDomainNeedsVFIO (PCI/mdev hostdevs, <interface type='hostdev'> included,
        # and NVMe disks) or a vDPA NIC.
        passthrough = max(2 * 1024 * 1024 * n_phb, memory + memory // 512 * n_phb + 8192)
        why += " + passthrough term"
    return LibvirtLimit(v, (base + passthrough) * KiB, "ppc64", why)
