"""How many VFIO containers (or iommufd IOASes) map the guest address space.

Without a vIOMMU every VFIO device shares one container; with one, each device has
its own address space and pins everything again (N x). QEMU's userspace NVMe driver
opens its own container per disk, and each vDPA device pins guest memory itself.
These are the same counts libvirt's >= 9.3 formula multiplies memory by.

iommufd (libvirt >= 12.1) maps through IOASes instead of containers. Behind a vIOMMU
each device still has an address space, and so an IOAS, of its own. Without one, the
devices on one iommufd object share an IOAS, but a type1 container and an IOAS never
share: a domain mixing both pins the guest twice, where libvirt's formula (which has
no iommufd branch, up to 12.3) counts one.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..domain import Domain
from ..host.facts import HostFacts
from ..plugins.spec import hookimpl


@hookimpl
def memlock_guard_container_reasons(domain: Domain, host: HostFacts) -> Iterable[str]:
    iommufd = domain.iommufd_devices
    vfio = [d for d in domain.vfio_devices if d not in iommufd] if iommufd \
        else domain.vfio_devices
    out: list[str] = []
    if domain.vfio_devices:
        if domain.has_viommu(host.libvirt_version):
            out += [f"VFIO {d}: own container (vIOMMU)" for d in vfio]
            out += [f"iommufd {d}: own IOAS (vIOMMU)" for d in iommufd]
        else:
            if vfio:
                out.append(f"VFIO: one container shared by {len(vfio)} device(s)")
            if iommufd:
                out.append(f"iommufd: one IOAS shared by {len(iommufd)} device(s)")
    out += [f"NVMe disk {d}: QEMU's userspace driver" for d in domain.nvme_disks]
    out += [f"vDPA {d}" for d in domain.vdpa_devices]
    return out
