"""KubeVirt's memlock limit for the same VM, by KubeVirt version.

virt-handler sets RLIMIT_MEMLOCK on virtqemud (inherited by QEMU) only for VFIO,
realtime or SEV VMs: GetMemoryOverhead() + the memory request rounded up to 1000 bytes
(pkg/virt-handler/isolation/detector.go AdjustResources; overhead from
pkg/virt-controller/services/renderresources.go GetMemoryOverhead). Terms:
  memory/512 (page tables, decimal-kilo rounding) + 220 MiB fixed (launcher monitor 25,
  launcher 100, virtlogd 25, virtqemud 40, QEMU 30) + 8 MiB per vCPU + 8 MiB IOThread
  + 32 MiB video when graphics are attached + 128 MiB on arm64 + 1 GiB for VFIO
  + 256 MiB SEV + 53 MiB TPM + 100 MiB dedicated CPUs.
1.9 adds (N-1) x memory for N VFIO devices, without looking for a vIOMMU (PR #17805);
unreleased main sets the limit to unlimited (PR #17857). The VMI is inferred from the
domain XML, so exec probes and downward metrics (10-100 MiB, 1 MiB) are not seen.
"""

from __future__ import annotations

from typing import NamedTuple

from ..domain import Domain
from ..support.units import GiB, MiB

KNOWN_VERSIONS = ("1.0", "1.1", "1.2", "1.3", "1.4", "1.5", "1.6", "1.7", "1.8", "1.9", "main")
DEFAULT_VERSION = "1.9"
FIXED = (25 + 100 + 25 + 40 + 30) * MiB


class KubevirtLimit(NamedTuple):
    version: str
    bytes: int | None  # None with unlimited=False: KubeVirt leaves the limit alone
    unlimited: bool
    explanation: str


def overhead(domain: Domain) -> int:
    """GetMemoryOverhead() for the VMI this domain stands for."""
    req = _ceil_1000(domain.memory)
    total = req // 512 + FIXED + 8 * MiB * domain.vcpus + 8 * MiB
    if domain.graphics or any(v.model not in (None, "none") for v in domain.videos):
        total += 32 * MiB
    if domain.arch == "aarch64":
        total += 128 * MiB
    if domain.vfio_devices:
        total += GiB
    if (domain.launch_security or "").startswith("sev"):
        total += 256 * MiB
    if domain.has_tpm:
        total += 53 * MiB
    return total


def kubevirt_limit(domain: Domain, version: str = DEFAULT_VERSION) -> KubevirtLimit:
    if version not in KNOWN_VERSIONS:
        raise ValueError(f"unknown KubeVirt version {version!r} "
                         f"(known: {', '.join(KNOWN_VERSIONS)})")
    n_vfio = len(domain.vfio_devices)
    sev = (domain.launch_security or "").startswith("sev")
    if not (n_vfio or sev):
        return KubevirtLimit(version, None, False,
                             "no VFIO or SEV device: KubeVirt leaves the limit alone")
    if version == "main":
        return KubevirtLimit(version, None, True, "unreleased main: unlimited")
    limit = overhead(domain) + _ceil_1000(domain.memory)
    why = "memory + overhead (incl. 1 GiB for VFIO)" if n_vfio else "memory + overhead"
    if version == "1.9" and n_vfio > 1:
        limit += (n_vfio - 1) * domain.memory
        why += f" + {n_vfio - 1} x memory for {n_vfio} VFIO devices"
    return KubevirtLimit(version, limit, False, why)


def _ceil_1000(n: int) -> int:
    return -(-n // 1000) * 1000
