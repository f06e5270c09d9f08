"""How many VFIO containers (or iommufd IOASes) map the guest address space.

Without a vIOMMU every VFIO device shares one container; with one, each device has
its own address space and pins everything again (N x). QEMU's userspace NVMe driver
opens its own container per disk, and each vDPA device pins guest memory itself.
These are the same counts libvirt's >= 9.3 formula multiplies memory by.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..domain import Domain
from ..host.facts import HostFacts
from ..plugins.spec import hookimpl


@hookimpl
def memlock_guard_container_reasons(domain: Domain, host: HostFacts) -> Iterable[str]:
    vfio = domain.vfio_devices
    out: list[str] = []
    if vfio:
        if domain.has_viommu(host.libvirt_version):
            out += [f"VFIO {d}: own container (vIOMMU)" for d in vfio]
        else:
            out.append(f"VFIO: one container shared by {len(vfio)} device(s)")
    out += [f"NVMe disk {d}: QEMU's userspace driver" for d in domain.nvme_disks]
    out += [f"vDPA {d}" for d in domain.vdpa_devices]
    return out
