"""Which kernel interface pins a domain's memory, and whom the kernel charges for it.

- VFIO type1 containers (and QEMU's userspace NVMe driver, which opens one, and
  vhost-vDPA) charge the QEMU process: its own locked memory against its own
  RLIMIT_MEMLOCK.
- iommufd (libvirt >= 12.1: ``<driver iommufd='yes'/>``, 12.2: the domain's
  ``<iommufd>``) has three modes per /dev/iommu file (drivers/iommu/iommufd/ioas.c,
  ``iommufd_option_rlimit_mode``): the default charges the *user* (the uid's
  ``user_struct``, shared by every process of that uid, checked against the pinning
  process's own limit); process mode (IOMMU_OPTION_RLIMIT_MODE=1, which needs
  CAP_SYS_RESOURCE) charges the process, like type1.
  - libvirt opening /dev/iommu itself sets process mode (virIOMMUFDOpenDevice,
    src/util/viriommufd.c);
  - a descriptor passed in (``fdgroup``, virDomainFDAssociate) keeps whatever mode its
    opener chose, and QEMU never sets one (backends/iommufd.c). The kernel default is
    user mode, so that is what memlock-guard assumes: it never under-counts. KubeVirt's
    device plugin does set process mode; then the other VMs' pins read back as process
    charges (hook/pins.py) and add nothing.
The facts and what was and was not confirmed in the sources: docs/sources.md section 13.
"""

from __future__ import annotations

from typing import NamedTuple

from ..domain import Domain

# Whom the kernel charges (plain strings: an enum costs the hook's every start a class).
PROCESS = "process"  # this QEMU's locked memory against its own limit
USER = "user"  # the uid's total (every QEMU of that uid) against this QEMU's limit


class Backend(NamedTuple):
    name: str  # none | vfio-type1 | iommufd | vfio-type1+iommufd
    accounting: str  # PROCESS | USER
    reason: str
    fdgroup: str | None = None  # the iommufd fd is passed in under this name

    @property
    def user_accounting(self) -> bool:
        return self.accounting == USER


def backend_of(domain: Domain) -> Backend:
    iommufd = domain.iommufd_devices
    type1 = len(domain.vfio_devices) - len(iommufd) + len(domain.nvme_disks)
    if not iommufd:
        if not (type1 or domain.vdpa_devices):
            return _NONE
        return _TYPE1
    name = "vfio-type1+iommufd" if type1 else "iommufd"
    fdgroup = domain.iommufd_fdgroup
    if fdgroup is None:
        return Backend(name, PROCESS,
                       "libvirt opens /dev/iommu itself and sets process accounting: "
                       "this QEMU's pins count against its own limit")
    return Backend(name, USER,
                   f"the iommufd descriptor is passed in (fdgroup {fdgroup!r}): unless its "
                   "opener chose process accounting, the kernel charges the user, so every "
                   "running QEMU of the same uid adds to what this one may pin", fdgroup)


_NONE = Backend("none", PROCESS, "nothing pins guest memory")
_TYPE1 = Backend("vfio-type1", PROCESS,
                 "VFIO type1 containers (and NVMe, vDPA) charge this QEMU's locked memory "
                 "against its own limit")


def ioas_count(domain: Domain, libvirt_version: tuple[int, int, int] | None = None) -> int:
    """How many IOASes the domain's iommufd devices pin through: one each behind a
    vIOMMU, else one shared (estimators/containers.py)."""
    n = len(domain.iommufd_devices)
    if not n:
        return 0
    return n if domain.has_viommu(libvirt_version) else 1
