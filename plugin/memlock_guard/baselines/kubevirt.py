"""KubeVirt's memlock limit for a VMI, by KubeVirt version, and what it would take to raise it.

virt-handler sets RLIMIT_MEMLOCK (soft = hard, a raw prlimit64) on the launcher's
virtqemud, which QEMU inherits, only for VMIs with VFIO devices (GPUs, host devices,
SR-IOV interfaces), realtime CPUs or SEV, and from 1.8 for ``reservedOverhead.memLock:
Required``. Read in kubevirt/kubevirt (docs/sources.md section 5):
- v1.0.0-v1.7.x: ``AdjustResources`` in pkg/virt-handler/isolation/detector.go, overhead
  from ``GetMemoryOverhead`` in pkg/virt-controller/services/renderresources.go;
- v1.8.0+: ``KvmVirtRuntime.CalculateMemlockSize`` in pkg/hypervisor/kvm/runtime.go,
  overhead from ``KvmHypervisorBackend.GetMemoryOverhead`` (hypervisorbackend.go);
- main after v1.9.0 (commit d951a72249, merged 2026-07-14; not in 1.9.0): unlimited.

limit = overhead + the base memory rounded up to 1000 bytes, where the base is
  v1.0-v1.6.3   resources.requests.memory
  v1.6.4-v1.7   memory.guest, else the request                    (commit ca79b5d624)
  v1.8+         memory.maxGuest, else a non-zero request, else memory.guest
and from v1.8.3 (backport c2d947e24d, PR #17863) + (N - 1) x base for N > 1 VFIO
devices, whether or not the domain has a vIOMMU. The overhead's terms changed too:
210 MiB of fixed daemons before v1.5.0 (220 MiB since), 16 MiB of video before v1.6.0
(32 MiB since), the dedicated-CPU 100 MiB added after the ratio in v1.1.0-v1.5.2 (before
it since), 800 MiB per port-less passt interface before v1.3.0, ``addedOverhead`` from
v1.8.0. ``additionalGuestMemoryOverheadRatio`` scales the overhead only, never the base.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

from ..domain import Domain
from ..support.errors import InputError
from ..support.units import GiB, MiB

DEFAULT_VERSION = "1.9.0"
VERSIONS_HELP = "1.0.0 ... 1.9.x (X.Y means X.Y.0), or main"
# The unlimited rlimit landed on main after 1.9.0 (kubevirt/kubevirt d951a72249).
MAIN_COMMIT = "d951a72249"
NEWEST_MINOR = (1, 9)

# libvirt in virt-launcher's default image (CentOS Stream 9), rpm/BUILD.bazel
# launcherbase_x86_64_cs9 at each X.Y.0 tag: the rules libvirt applies inside the pod.
LAUNCHER_LIBVIRT = {
    (1, 0): (9, 0, 0), (1, 1): (9, 5, 0), (1, 2): (9, 5, 0), (1, 3): (10, 0, 0),
    (1, 4): (10, 5, 0), (1, 5): (10, 10, 0), (1, 6): (10, 10, 0), (1, 7): (10, 10, 0),
    (1, 8): (11, 9, 0), (1, 9): (11, 10, 0),
}


class KubevirtVersion(NamedTuple):
    main: bool  # first, so that main sorts after every release
    major: int
    minor: int
    patch: int

    def __str__(self) -> str:
        return "main" if self.main else f"{self.major}.{self.minor}.{self.patch}"

    @property
    def release(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)

    @property
    def launcher_libvirt(self) -> tuple[int, int, int]:
        return LAUNCHER_LIBVIRT[NEWEST_MINOR if self.main else (self.major, self.minor)]


MAIN = KubevirtVersion(True, 1, 10, 0)
_VERSION = re.compile(r"v?(\d{1,3})\.(\d{1,3})(?:\.(\d{1,4}))?(?:-[0-9A-Za-z.]{1,40})?")


def parse_version(text: str, *, what: str = "KubeVirt version") -> KubevirtVersion:
    """``1.8.3``, ``v1.8.3``, ``1.8`` (= 1.8.0), ``v1.9.0-rc.1`` or ``main``."""
    t = text.strip()
    if t == "main":
        return MAIN
    m = _VERSION.fullmatch(t)
    v = m and KubevirtVersion(False, int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))
    if not v or (v.major, v.minor) not in LAUNCHER_LIBVIRT:
        later = (" (for a build of main with commit "
                 f"{MAIN_COMMIT} or later, say main)") if v and v > KubevirtVersion(
                     False, *NEWEST_MINOR, 1 << 20) else ""
        raise InputError(f"{what} {t[:40]!r} is not a KubeVirt version memlock-guard knows: "
                         f"{VERSIONS_HELP}{later}")
    return v


def parse_ratio(text: str, *, what: str = "additionalGuestMemoryOverheadRatio") -> str:
    """The ratio as KubeVirt stores it (a string); its webhook refuses non-numbers and
    values below 1.0 (validateGuestToRequestHeadroom), and so does this."""
    t = text.strip()
    if not re.fullmatch(r"\d{1,6}(\.\d{1,6})?", t) or float(t) < 1.0:
        raise InputError(f"{what} {t[:40]!r} is not a number of at least 1.0, such as 1.5")
    return t


class Vmi(NamedTuple):
    """What of a VirtualMachineInstance enters KubeVirt's memlock (all sizes in bytes)."""

    name: str  # namespace/name, for messages
    requests_memory: int  # spec.domain.resources.requests.memory; 0 when absent
    guest: int | None  # spec.domain.memory.guest
    max_guest: int | None  # spec.domain.memory.maxGuest
    vcpus: int  # GetNumberOfVCPUs, else the CPU limit, else the request; at least 1
    graphics: bool  # devices.autoattachGraphicsDevice nil or true
    arch: str  # spec.architecture (amd64, arm64, ...)
    gpus: int
    host_devices: int
    sriov: int  # interfaces with an sriov binding
    realtime: bool = False
    sev: bool = False  # launchSecurity.sev
    sev_snp: bool = False  # launchSecurity.snp (counted from 1.7)
    tpm: bool = False  # devices.tpm present
    tpm_enabled: bool = True  # ... and not enabled: false (counted from 1.7)
    dedicated: bool = False  # dedicatedCpuPlacement, or requests == limits (QoS Guaranteed)
    downward_metrics: bool = False
    exec_probes: int = 0  # liveness and readiness probes with exec
    passt_without_ports: int = 0
    added_overhead: int | None = None  # memory.reservedOverhead.addedOverhead
    memlock_required: bool = False  # memory.reservedOverhead.memLock == Required
    target_overhead: int | None = None  # status.migrationState.targetMemoryOverhead
    inferred: bool = False  # guessed from a domain XML, not read from a VMI

    @property
    def n_vfio(self) -> int:
        """util.CountVFIODevices: GPUs (PCI or mediated), host devices, SR-IOV NICs."""
        return self.gpus + self.host_devices + self.sriov


def vmi_from_domain(domain: Domain) -> Vmi:
    """The VMI a domain XML stands for, when no VMI is at hand (estimate, explain).

    Memory request = guest memory = the domain's memory; every VFIO device counts as a
    host device. Not visible in a domain: exec probes, downward metrics, passt ports,
    QoS class, reservedOverhead.
    """
    return Vmi(
        name=domain.name, requests_memory=domain.memory, guest=domain.memory,
        max_guest=None, vcpus=domain.vcpus,
        graphics=bool(domain.graphics) or any(v.model not in (None, "none")
                                               for v in domain.videos),
        arch="arm64" if domain.arch == "aarch64" else "amd64",
        gpus=0, host_devices=len(domain.vfio_devices), sriov=0,
        sev=(domain.launch_security or "") == "sev",
        sev_snp=(domain.launch_security or "") == "sev-snp",
        tpm=domain.has_tpm, inferred=True)


class KubevirtLimit(NamedTuple):
    version: str
    bytes: int | None  # None with unlimited=False: KubeVirt leaves the limit alone
    unlimited: bool
    explanation: str
    overhead: int | None = None  # the overhead term, ratio applied
    base: int | None = None  # the base memory the limit adds
    vmi: Vmi | None = None
    ratio: str | None = None


def ceil_1000(n: int) -> int:
    """resource.NewScaledQuantity(q.ScaledValue(Kilo), Kilo): up to whole decimal kB."""
    return -(-n // 1000) * 1000


def overhead(vmi: Vmi, version: KubevirtVersion, ratio: str | None = None) -> int:
    """GetMemoryOverhead() of ``version`` for ``vmi``, ``ratio`` applied."""
    v = version.release if not version.main else (1, 10, 0)
    total = ceil_1000(vmi.requests_memory) // 512  # page tables: the request only
    total += (210 if v < (1, 5, 0) else 220) * MiB  # launcher monitor, launcher, daemons, QEMU
    total += 8 * MiB * vmi.vcpus + 8 * MiB  # per vCPU, and one IOThread
    if vmi.graphics:
        total += (16 if v < (1, 6, 0) else 32) * MiB
    if vmi.arch == "arm64":
        total += 128 * MiB  # two 64 MiB pflash
    if vmi.n_vfio:
        total += GiB
    if vmi.downward_metrics:
        total += MiB
    if vmi.exec_probes:
        total += 10 * MiB * vmi.exec_probes + 100 * MiB
    if vmi.sev or (vmi.sev_snp and v >= (1, 7, 0)):
        total += 256 * MiB
    if vmi.tpm and (vmi.tpm_enabled or v < (1, 7, 0)):
        total += 53 * MiB
    if v < (1, 3, 0):
        total += 800 * MiB * vmi.passt_without_ports
    dedicated = vmi.dedicated and v >= (1, 1, 0)
    after_ratio = (1, 1, 0) <= v <= (1, 5, 2)
    if dedicated and not after_ratio:
        total += 100 * MiB
    if v >= (1, 8, 0) and vmi.added_overhead is not None:
        total += vmi.added_overhead
    if ratio:
        # MultiplyMemory: float64 of the decimal-kB value, truncated toward zero.
        total += int(float(-(-total // 1000)) * (float(ratio) - 1.0)) * 1000
    if dedicated and after_ratio:
        total += 100 * MiB
    return total


def base_memory(vmi: Vmi, version: KubevirtVersion) -> int:
    v = version.release if not version.main else (1, 10, 0)
    if v < (1, 6, 4):
        return vmi.requests_memory
    if v < (1, 8, 0):
        return vmi.guest if vmi.guest else vmi.requests_memory
    if vmi.max_guest:
        return vmi.max_guest
    return vmi.requests_memory or (vmi.guest or 0)


def kubevirt_limit(vmi: Vmi | Domain, version: str | KubevirtVersion = DEFAULT_VERSION,
                   ratio: str | None = None) -> KubevirtLimit:
    """virt-handler's RLIMIT_MEMLOCK for ``vmi`` (a Domain stands for the VMI it implies)."""
    if isinstance(vmi, Domain):
        vmi = vmi_from_domain(vmi)
    v = version if isinstance(version, KubevirtVersion) else parse_version(version)
    name = str(v)
    v18 = v >= KubevirtVersion(False, 1, 8, 0)
    if not (vmi.n_vfio or vmi.realtime or vmi.sev or vmi.sev_snp
            or (v18 and vmi.memlock_required)):
        return KubevirtLimit(name, None, False, "no VFIO device, realtime CPU, SEV or "
                             "memLock: Required: KubeVirt leaves the limit alone",
                             vmi=vmi, ratio=ratio)
    if v.main:
        return KubevirtLimit(name, None, True, f"main since {MAIN_COMMIT}: unlimited",
                             vmi=vmi, ratio=ratio)
    base = base_memory(vmi, v)
    if v18 and vmi.target_overhead:
        over = vmi.target_overhead
        why = "the migration's target overhead"
    else:
        over = overhead(vmi, v, ratio)
        why = "overhead" + (f" x ratio {ratio}" if ratio else "")
    limit = over + ceil_1000(base)
    n = vmi.n_vfio
    why = f"{why} + memory" + (" (incl. 1 GiB for VFIO)" if n else "")
    if v >= KubevirtVersion(False, 1, 8, 3) and n > 1:
        limit += base * (n - 1)
        why += f" + {n - 1} x memory for {n} VFIO devices"
    return KubevirtLimit(name, limit, False, why, over, base, vmi, ratio)


# -- what it would take --------------------------------------------------------------

def added_overhead_for(kv: KubevirtLimit, target: int) -> int | None:
    """The smallest ``reservedOverhead.addedOverhead``, in whole MiB, that lifts ``kv``
    to ``target`` bytes; None before 1.8.0 (no such field) or when ``kv`` is not finite.
    addedOverhead enters the overhead before the ratio, so the ratio scales it too."""
    if kv.vmi is None or kv.bytes is None:
        return None
    v = parse_version(kv.version)
    if v.main or v < KubevirtVersion(False, 1, 8, 0):
        return None
    vmi = kv.vmi._replace(target_overhead=None)
    have = vmi.added_overhead or 0

    def limit(mib: int) -> int:
        got = kubevirt_limit(vmi._replace(added_overhead=have + mib * MiB), v, kv.ratio)
        return got.bytes or 0

    return _smallest(limit, target, 1 << 40)


def ratio_for(kv: KubevirtLimit, target: int) -> str | None:
    """The smallest ``additionalGuestMemoryOverheadRatio`` (two decimals) that lifts ``kv``
    to ``target`` bytes; None when even 1000 would not."""
    if kv.vmi is None or kv.bytes is None:
        return None
    v = parse_version(kv.version)
    vmi = kv.vmi._replace(target_overhead=None)
    now = round(float(kv.ratio or "1") * 100)

    def limit(hundredths: int) -> int:
        got = kubevirt_limit(vmi, v, f"{(now + hundredths) / 100:.2f}")
        return got.bytes or 0

    found = _smallest(limit, target, 100_000 - now)
    return None if found is None else f"{(now + found) / 100:.2f}"


def upgrade_for(kv: KubevirtLimit, target: int) -> KubevirtVersion | None:
    """The first later KubeVirt whose limit reaches ``target`` (main: unlimited)."""
    if kv.vmi is None:
        return None
    v = parse_version(kv.version)
    for candidate in (KubevirtVersion(False, 1, 8, 3), KubevirtVersion(False, 1, 9, 0), MAIN):
        if candidate <= v:
            continue
        got = kubevirt_limit(kv.vmi, candidate, kv.ratio)
        if got.unlimited or (got.bytes is not None and got.bytes >= target):
            return candidate
    return None


def _smallest(limit: Callable[[int], int], target: int, upper: int) -> int | None:
    """The smallest k in [1, upper] with limit(k) >= target (limit is non-decreasing)."""
    if limit(upper) < target:
        return None
    lo, hi = 1, upper
    while lo < hi:
        mid = (lo + hi) // 2
        if limit(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo
