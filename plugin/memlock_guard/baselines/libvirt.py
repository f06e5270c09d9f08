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

import itertools
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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


def pseries_phbs(domain: Domain, iommu_groups: Mapping[str, int] | None = None) -> int:
    """PHBs a pSeries domain has once libvirt has assigned addresses.

    Every PCI bus of a pSeries guest is a PHB (a pci-root controller): the default one
    (index 0) even when none is listed, the listed ones, and every bus number up to the
    highest that a controller index or a device address names (libvirt fills the gaps).
    Then libvirt places the devices without a guest address, keeping each IOMMU group
    on a bus of its own (libvirt 9.0, src/qemu/qemu_domain_address.c
    qemuDomainSetupIsolationGroups and qemuDomainFillDeviceIsolationGroup,
    src/conf/domain_addr.c virDomainPCIAddressGetNextAddr and
    virDomainPCIAddressReserveAddrInternal; docs/sources.md):
    - a PCI hostdev, or an ``<interface type='hostdev'>``, is in isolation group
      IOMMU group + 1; every other device in group 0, which PHB 0 takes;
    - only PHB 0's group is locked. Any other bus that is still empty *adopts* the
      group of the first device placed on it, so a listed empty PHB takes the first
      isolated device instead of a new PHB being added;
    - a device goes to the first bus of its group, else the first empty unlocked bus,
      else a new PHB; devices with a user-given address are placed first, and a bus
      whose user-placed devices are of different groups is group 0.
    ``iommu_groups`` (host PCI address -> IOMMU group, read from this host's sysfs) says
    which devices share a group; a device missing from it is in group 0, as libvirt
    makes it when the lookup fails ("device won't be isolated"). None: not known, and
    each device counts as a group of its own. Not modelled: the extra PHB libvirt adds
    when more than 31 devices fill a bus, and ``<interface type='network'>`` on a
    hostdev network, which libvirt also isolates (its network is not in the XML).
    """
    pci = [c for c in domain.controllers if c.type == "pci"]
    phb_like = [c for c in pci if c.model in (None, "pci-root")
                and c.target_model in (None, "spapr-pci-host-bridge")]
    other = {c.bus_index for c in pci if c.bus_index is not None and c not in phb_like}
    top = max([c.bus_index for c in pci if c.bus_index is not None] + list(domain.pci_buses),
              default=0)
    buses = [_Bus(phb=i not in other) for i in range(top + 1)]
    # PHBs listed without an index: libvirt numbers them after the others.
    buses += [_Bus(phb=True) for _ in range(len(phb_like) - sum(b.phb for b in buses))]
    buses[0].locked = True
    group = _isolation_groups(iommu_groups)
    placed = [(h.guest_bus, group(h.source)) for h in domain.hostdevs
              if h.is_vfio and h.type == "pci" and h.guest_bus is not None]
    placed += [(i.guest_bus, group(i.source_pci)) for i in domain.interfaces
               if i.is_vfio and i.guest_bus is not None]
    others = Counter(domain.pci_buses)  # group-0 devices: all placed minus the isolated
    others.subtract(bus for bus, _ in placed)
    on_bus: dict[int, list[int]] = {b: [0] * n for b, n in others.items() if n > 0}
    for bus, g in placed:
        on_bus.setdefault(bus, []).append(g)
    for b, groups in on_bus.items():
        if 0 <= b < len(buses):
            buses[b].empty = False
            if not buses[b].locked:
                buses[b].group = groups[0] if len(set(groups)) == 1 else 0
    pending = [group(h.source) for h in domain.hostdevs
               if h.is_vfio and h.type == "pci" and not h.has_guest_address]
    pending += [group(i.source_pci) for i in domain.interfaces
                if i.is_vfio and i.address_type is None]
    for g in dict.fromkeys(pending):  # each group once, in libvirt's order
        if g == 0 or any(b.group == g for b in buses):
            continue  # PHB 0 or the bus its group already has
        free = next((b for b in buses if b.empty and not b.locked), None)
        if free is None:
            buses.append(_Bus(phb=True, group=g, empty=False))
        else:
            free.group, free.empty = g, False
    return sum(b.phb for b in buses)


@dataclass(slots=True)
class _Bus:
    """A guest PCI bus while libvirt assigns addresses (virDomainPCIAddressBus)."""

    phb: bool  # a pci-root (PHB); False for a bus a pci-bridge provides
    group: int = 0  # isolation group
    locked: bool = False  # only the default PHB's group is locked
    empty: bool = True


def _isolation_groups(iommu_groups: Mapping[str, int] | None) -> Callable[[str | None], int]:
    """The isolation group of an isolated device by its host PCI address."""
    if iommu_groups is None:
        unique = itertools.count(1 << 32)  # unknown: each device a group of its own
        return lambda addr: next(unique)
    known = dict(iommu_groups)
    return lambda addr: known.get(addr or "", -1) + 1


def libvirt_limit(domain: Domain, version: tuple[int, int, int] | None = None, *,
                  at_start: bool = True,
                  nvlink2_bridges: tuple[str, ...] = (),
                  iommu_groups: Mapping[str, int] | None = None) -> LibvirtLimit:
    v = version or LATEST
    hard = domain.memtune.hard_limit
    if hard and hard // KiB < LIBVIRT_UNLIMITED:  # virMemoryLimitIsSet
        return LibvirtLimit(v, hard, "hard_limit", "<memtune><hard_limit> is set")
    if domain.memory_backing.locked:
        return LibvirtLimit(v, None, "locked", "<memoryBacking><locked/>: unlimited")
    if domain.is_ppc64 and domain.type == "kvm":
        return _ppc64(domain, v, at_start, nvlink2_bridges, iommu_groups)
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
           nvlink2_bridges: tuple[str, ...],
           iommu_groups: Mapping[str, int] | None) -> LibvirtLimit:
    # All in KiB, integer division, exactly as getPPC64MemLockLimitBytes().
    n_phb = pseries_phbs(domain, iommu_groups)
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
