"""Assemble one full judgement of a domain: ledger, baselines, effective limit, verdict.

This is the single entry point every front end uses (estimate, the hook, explain,
check, apply, watch), so they can never disagree about a domain.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import pluggy

from ..baselines.kubevirt import DEFAULT_VERSION as KUBEVIRT_DEFAULT
from ..baselines.kubevirt import KubevirtLimit, Vmi, kubevirt_limit, parse_version
from ..baselines.libvirt import LibvirtLimit, libvirt_limit
from ..domain import Domain
from ..host.facts import HostFacts
from ..support import audit
from ..support.units import MiB
from .engine import build_ledger
from .footprint import qemu_footprint
from .ledger import Ledger
from .modes import Mode, resolve
from .verdict import EffectiveLimit, Verdict, judge

DEFAULT_MARGIN = 64 * MiB


class Settings(NamedTuple):
    mode: Mode = Mode.AUTO
    margin: int = DEFAULT_MARGIN
    zero_page_allowance: int | None = None  # None: tolerant forgives every zero-fill page
    libvirt_version: tuple[int, int, int] | None = None  # None: the host's, else latest
    kubevirt_version: str = KUBEVIRT_DEFAULT
    kubevirt_overhead_ratio: str | None = None  # additionalGuestMemoryOverheadRatio
    platform: str = "libvirt"  # libvirt | kubevirt: whose rule sets QEMU's limit
    # The policy's <hotplug-reserve><vfio-devices>: room for this many more VFIO
    # devices behind a vIOMMU in the recommended hard_limit.
    reserve_vfio_devices: int = 0


DEFAULT_SETTINGS = Settings()


class Report(NamedTuple):
    domain: Domain
    host: HostFacts
    settings: Settings
    ledger: Ledger
    libvirt: LibvirtLimit
    libvirt_version_assumed: bool
    kubevirt: KubevirtLimit
    verdict: Verdict

    @property
    def will_not_start(self) -> tuple[str, ...]:
        """Why QEMU will refuse to start this domain on this host, whatever the limit:
        a ``<rom file>`` path that does not exist (hw/pci/pci.c pci_add_option_rom:
        ``failed to find romfile``; qemu_find_file has no file-name fallback for a
        path). With ``<rom bar='off'>`` QEMU starts all the same (checked with libvirt
        9.0 and QEMU 7.2: rom_add_option gives up quietly), so that one is not named.
        One sentence for a verdict: starts with "QEMU will refuse to start it"."""
        roms = [i.rom for i in self.domain.interfaces] + [h.rom for h in self.domain.hostdevs]
        missing = [r.file for r in roms if r.file and not r.suppressed
                   and r.file in self.host.missing_files]
        if not missing:
            return ()
        files = ", ".join(f"<rom file='{f}'>" for f in dict.fromkeys(missing))
        return (f"QEMU will refuse to start it: {files} does not exist on this host "
                f"(failed to find romfile).",)


def assess(domain: Domain, host: HostFacts, settings: Settings = DEFAULT_SETTINGS,
           pm: pluggy.PluginManager | None = None, vmi: Vmi | None = None, *,
           uid_pinned: int = 0) -> Report:
    """Judge ``domain``; ``vmi`` is the KubeVirt VMI it was made from, when known (the
    sidecar), else KubeVirt's baseline is computed for the VMI the domain implies.
    ``uid_pinned``: what the other running QEMUs of this domain's uid already have
    charged to the user; counted only when this domain is under iommufd user accounting
    (backend.py), and the caller finds it (hook/pins.py, libvirtd/pins.py)."""
    ledger = build_ledger(domain, host, pm)
    kv_version = parse_version(settings.kubevirt_version)
    version = settings.libvirt_version or host.libvirt_version
    if settings.platform == "kubevirt" and settings.libvirt_version is None:
        version = kv_version.launcher_libvirt  # the libvirt inside virt-launcher
    lv = libvirt_limit(domain, version, nvlink2_bridges=host.nvlink2_bridges,
                       iommu_groups=host.iommu_group_map)
    kv = kubevirt_limit(vmi if vmi is not None else domain, kv_version,
                        settings.kubevirt_overhead_ratio)
    mode, why = resolve(settings.mode, host)
    user = ledger.backend is not None and ledger.backend.user_accounting
    verdict = judge(ledger, effective_limit(lv, kv, host, settings.platform), mode=mode,
                    mode_reason=why, footprint=qemu_footprint(domain, ledger),
                    margin=settings.margin, zero_page_allowance=settings.zero_page_allowance,
                    reserve_containers=reserve_containers(domain, settings, version),
                    uid_pinned=uid_pinned if user else 0)
    return Report(domain, host, settings, ledger, lv, version is None, kv, verdict)


def reserve_containers(domain: Domain, settings: Settings,
                       version: tuple[int, int, int] | None) -> int:
    """Containers the policy's VFIO hotplug reserve adds: one per device behind a
    vIOMMU; without one, hot-added devices join the domain's VFIO container, which
    the first of them opens if there is none yet."""
    n = settings.reserve_vfio_devices
    if n <= 0:
        return 0
    if domain.has_viommu(version):
        return n
    return 0 if domain.vfio_devices else 1


def effective_limit(lv: LibvirtLimit, kv: KubevirtLimit, host: HostFacts,
                    platform: str) -> EffectiveLimit:
    inherited = EffectiveLimit(host.inherited_memlock, "inherited",
                               "limit inherited from the libvirt daemon")
    if platform == "kubevirt":
        return _in_pod(lv, kv, inherited)
    if lv.bytes is None:
        return EffectiveLimit(None, lv.source, lv.explanation)
    if lv.source == "none":
        return inherited
    source = "libvirt-formula" if lv.source == "formula" else lv.source
    return EffectiveLimit(lv.bytes, source, lv.explanation)


def _in_pod(lv: LibvirtLimit, kv: KubevirtLimit, inherited: EffectiveLimit) -> EffectiveLimit:
    """QEMU's limit in a virt-launcher pod (docs/sources.md section 5).

    virt-handler prlimits virtqemud (soft = hard = M, or unlimited on main); the pod has
    no CAP_SYS_RESOURCE. libvirt there computes its own limit L (no <memtune>: KubeVirt's
    domain has none) and sets QEMU's to exactly L at launch (virCommandSetMaxMemLock ->
    virProcessSetMaxMemLock, soft = hard = L): with L = 0 QEMU keeps M; with L <= M
    QEMU gets L; with L > M the start fails ("cannot limit locked memory").
    """
    kubevirt = f"KubeVirt {kv.version}: {kv.explanation}"
    if kv.unlimited:
        outer: EffectiveLimit = EffectiveLimit(None, "kubevirt", kubevirt)
    elif kv.bytes is None:
        outer = inherited._replace(explanation=f"KubeVirt {kv.version} leaves the limit "
                                               f"alone: the container's default")
    else:
        outer = EffectiveLimit(kv.bytes, "kubevirt", kubevirt)
    if lv.bytes == 0 or lv.source == "none":
        return outer
    if lv.bytes is None:  # <locked/> in the domain: libvirt asks for unlimited
        if outer.bytes is None:
            return EffectiveLimit(None, "kubevirt", f"{kubevirt}; libvirt in the pod sets "
                                                    "unlimited (<memoryBacking><locked/>)")
        return outer._replace(demand=1 << 63, explanation=(
            f"{outer.explanation}; libvirt in the pod sets unlimited (<memoryBacking>"
            f"<locked/>), which is above it, so QEMU cannot start"))
    pod = f"libvirt {'.'.join(map(str, lv.version))} in the pod: {lv.explanation}"
    if outer.bytes is not None and lv.bytes > outer.bytes:
        return outer._replace(demand=lv.bytes, explanation=(
            f"{outer.explanation}; {pod} = {lv.bytes} bytes, above it, so QEMU cannot "
            f"start (cannot limit locked memory)"))
    return EffectiveLimit(lv.bytes, "kubevirt", f"{pod}, within what {kubevirt.split(':')[0]} "
                                                f"allows")


def audit_record(op: str, report: Report, *, action: str, policy: str | None = None,
                 **extra: Any) -> dict[str, Any]:
    """The audit-log record of a decision made on ``report`` (the hook, apply, watch)."""
    v = report.verdict
    if report.ledger.excluded_plugins:
        extra.setdefault("excluded_plugins", list(report.ledger.excluded_plugins))
    return audit.entry(op=op, domain=report.domain.name, uuid=report.domain.uuid,
                       action=action, verdict=v.fit.value, mode=v.mode.value,
                       required=v.required, limit=v.limit.bytes, limit_source=v.limit.source,
                       recommended_hard_limit=v.recommended_hard_limit, policy=policy,
                       **extra)
