"""Guest RAM: boot memory and every memory device, mapped read-write by every container.

With ``<maxMemory>``, the memory that can still be hot-added is an item of its own,
marked ``hotplug``: not in the requirement at start (the VM starts and runs without
it), but in the recommended hard_limit. Once a hard_limit is set, libvirt no longer
grows QEMU's limit at a memory hot-add (qemuDomainAdjustMaxMemLock returns the
hard_limit), and QEMU aborts when it cannot map new RAM for VFIO after machine init
(hw_error "vfio: DMA mapping failed", hw/vfio/common.c). docs/sources.md section 13.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..accounting.ledger import Backing, Exposure, Kind
from ..domain import Domain
from ..host.facts import HostFacts
from ..plugins.spec import hookimpl


@hookimpl
def memlock_guard_exposures(domain: Domain, host: HostFacts) -> Iterable[Exposure]:
    devices = sum(d.size for d in domain.memory_devices)
    out = [Exposure("guest RAM", domain.memory - devices, Backing.ANON, readonly=False,
                    kind=Kind.RAM)]
    for d in domain.memory_devices:
        note = None
        if d.model == "virtio-mem":
            # QEMU maps only plugged blocks, but the guest may plug up to <size>.
            note = "virtio-mem counted at its maximum <size>"
        out.append(Exposure(f"memory device {d.label} ({d.model})", d.size, Backing.ANON,
                            readonly=False, kind=Kind.RAM, note=note))
    more = domain.hotpluggable_memory
    if more:
        out.append(Exposure("hot-pluggable memory up to maxMemory", more, Backing.ANON,
                            readonly=False, kind=Kind.RAM, hotplug=True,
                            note="not mapped at start: counted in the recommended "
                                 "hard_limit, not in the requirement"))
    return out
