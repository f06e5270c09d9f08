"""The accounting modes, and resolving ``auto`` from host facts.

Upstream has no module parameter for zero-page accounting (the 2022 "strict" and
"tolerated overrun" proposals were not merged), but a vendor kernel may carry one:
a ``strict`` parameter of vfio_iommu_type1 (Y/N) decides when present. Otherwise
Linux >= 6.2 breaks COW for read-only long-term pins, so zero pages are charged
(strict); so does iommufd. An unknown kernel is treated as strict: never under-count.
"""

from __future__ import annotations

from enum import StrEnum

from ..host.facts import HostFacts


class Mode(StrEnum):
    STRICT = "strict"  # every mapped page is charged (Linux >= 6.2, iommufd)
    TOLERANT = "tolerant"  # zero-fill pages are not charged, up to an allowance
    AUTO = "auto"  # decide from the host


STRICT_PARAMS = ("strict", "strict_zero_page", "account_zero_page")


def resolve(mode: Mode, host: HostFacts) -> tuple[Mode, str]:
    """(strict|tolerant, why)."""
    if mode is not Mode.AUTO:
        return mode, "configured"
    for name in STRICT_PARAMS:
        value = host.param("vfio_iommu_type1", name)
        if value is not None:
            on = value.strip().upper() in ("Y", "1", "YES", "ON")
            return (Mode.STRICT if on else Mode.TOLERANT,
                    f"vfio_iommu_type1 parameter {name}={value}")
    kv = host.kernel_version
    if kv is None:
        return Mode.STRICT, "kernel version unknown"
    if kv >= (6, 2):
        return Mode.STRICT, f"kernel {host.kernel_release} >= 6.2 charges zero pages"
    if host.iommufd_available and host.param("iommufd", "account_mode") == "process":
        return Mode.STRICT, "iommufd charges every pinned page"
    return Mode.TOLERANT, f"kernel {host.kernel_release} < 6.2 pins the zero page uncharged"
