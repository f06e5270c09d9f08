"""Guest RAM: boot memory and every memory device, mapped read-write by every container."""

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
    return out
