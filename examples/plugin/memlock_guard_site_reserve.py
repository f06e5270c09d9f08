"""A site's own locked-memory reserve for each passthrough device: an example plugin.

Some hosts pin memory for a passthrough device beyond what QEMU maps for it, for
example a vendor driver inside the guest that registers extra DMA buffers through a
paravirtual channel, and the site has measured how much. This plugin adds that reserve
to the ledger, once per VFIO device, so that the hook refuses (and apply raises) with
it counted. Adapt RESERVE_PER_DEVICE, or key it on what the domain says.

Install it next to memlock-guard, then allow it in /etc/memlock-guard/policy.xml:

    <plugins><allow>site-reserve</allow></plugins>

Until it is allowed, memlock-guard does not even import it.
"""

from __future__ import annotations

from collections.abc import Iterable

from memlock_guard.plugins import Backing, Domain, Exposure, HostFacts, Kind, hookimpl

RESERVE_PER_DEVICE = 32 * 1024 * 1024


@hookimpl
def memlock_guard_exposures(domain: Domain, host: HostFacts) -> Iterable[Exposure]:
    # One reserve per VFIO device. containers=1: the driver's buffers are pinned once,
    # not once per VFIO container as the guest's address space is.
    return [Exposure(f"site reserve for {device}", RESERVE_PER_DEVICE, Backing.ANON,
                     readonly=False, kind=Kind.OTHER, containers=1,
                     note="measured at this site (memlock_guard_site_reserve)")
            for device in domain.vfio_devices]
