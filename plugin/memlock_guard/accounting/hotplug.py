"""Where a hard_limit stops libvirt's own memlock growth at hotplug: the warnings.

Without ``<memtune><hard_limit>``, libvirt computes QEMU's memlock limit again at every
hot-add of a VFIO/NVMe/vDPA/memory device, with the new device counted, and raises the
running QEMU's RLIMIT_MEMLOCK (qemuDomainAdjustMaxMemLock, src/qemu/qemu_domain.c).
With a hard_limit, that computation returns the hard_limit itself, so nothing grows: a
second GPU behind a vIOMMU fails to attach, and a DIMM hot-added beyond the limit
kills the VM (QEMU's hw_error when a DMA map fails after machine init).

So for a domain whose limit is its hard_limit, ``warnings()`` says when that hard_limit
has no room for
- one more VFIO device behind the domain's vIOMMU (one more container, at the memory
  the domain has now), when it has passthrough devices already;
- memory hot-added up to ``<maxMemory>``, when anything pins guest memory.
``memlock-guard attach-device`` raises the hard_limit before such a hotplug; that is
what each warning says to use. Pure: a Report in, records out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from ..support.units import human
from .modes import Mode

if TYPE_CHECKING:
    from .report import Report


class HotplugWarning(NamedTuple):
    kind: str  # vfio-device | memory
    needed: int  # bytes the limit would have to be for that hotplug
    limit: int  # the hard_limit, bytes
    message: str


def warnings(report: Report) -> tuple[HotplugWarning, ...]:
    v = report.verdict
    limit = v.limit.bytes
    if v.limit.source != "hard_limit" or limit is None:
        return ()  # libvirt's own formula grows at hotplug; unlimited needs no room
    domain, ledger = report.domain, report.ledger
    name = domain.name
    out: list[HotplugWarning] = []
    if domain.vfio_devices and domain.has_viommu(report.libvirt.version):
        one = ledger.one_container(report.settings.zero_page_allowance)
        needed = v.required + v.uid_pinned + (one[0] if v.mode is Mode.STRICT else one[1])
        if needed > limit:
            out.append(HotplugWarning(
                "vfio-device", needed, limit,
                f"{name}: hard_limit {human(limit)} leaves no room for one more VFIO device "
                f"behind the vIOMMU (that needs {human(needed)}); libvirt does not grow a "
                f"hard_limit at hotplug, so hot-add it with memlock-guard attach-device, "
                f"not virsh attach-device"))
    if ledger.containers and v.memory_reserve:
        needed = v.required + v.uid_pinned + v.memory_reserve
        if needed > limit:
            out.append(HotplugWarning(
                "memory", needed, limit,
                f"{name}: hard_limit {human(limit)} leaves no room for memory hot-added up to "
                f"maxMemory (that needs {human(needed)}); QEMU aborts when it cannot map "
                f"hot-added RAM for DMA, so hot-add memory with memlock-guard "
                f"attach-device, not virsh attach-device"))
    return tuple(out)


def to_dicts(found: tuple[HotplugWarning, ...]) -> list[dict[str, object]]:
    """The JSON form (``warnings`` in check, explain and estimate output)."""
    return [{"kind": w.kind, "needed_bytes": w.needed, "limit_bytes": w.limit,
             "message": w.message} for w in found]
