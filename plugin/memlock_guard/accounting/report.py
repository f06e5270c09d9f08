"""Assemble one full judgement of a domain: ledger, baselines, effective limit, verdict.

This is the single entry point every front end uses (estimate, the hook, explain,
check, apply, watch), so they can never disagree about a domain.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import pluggy

from ..baselines.kubevirt import DEFAULT_VERSION as KUBEVIRT_DEFAULT
from ..baselines.kubevirt import KubevirtLimit, kubevirt_limit
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
    platform: str = "libvirt"  # libvirt | kubevirt: whose rule sets QEMU's limit


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


def assess(domain: Domain, host: HostFacts, settings: Settings = DEFAULT_SETTINGS,
           pm: pluggy.PluginManager | None = None) -> Report:
    ledger = build_ledger(domain, host, pm)
    version = settings.libvirt_version or host.libvirt_version
    lv = libvirt_limit(domain, version, nvlink2_bridges=host.nvlink2_bridges)
    kv = kubevirt_limit(domain, settings.kubevirt_version)
    mode, why = resolve(settings.mode, host)
    verdict = judge(ledger, effective_limit(lv, kv, host, settings.platform), mode=mode,
                    mode_reason=why, footprint=qemu_footprint(domain, ledger),
                    margin=settings.margin, zero_page_allowance=settings.zero_page_allowance)
    return Report(domain, host, settings, ledger, lv, version is None, kv, verdict)


def effective_limit(lv: LibvirtLimit, kv: KubevirtLimit, host: HostFacts,
                    platform: str) -> EffectiveLimit:
    inherited = EffectiveLimit(host.inherited_memlock, "inherited",
                               "limit inherited from the libvirt daemon")
    if platform == "kubevirt":
        # memtune is refused in KubeVirt's session-mode libvirt; virt-handler's prlimit
        # on virtqemud is what QEMU inherits.
        if kv.unlimited:
            return EffectiveLimit(None, "kubevirt", f"KubeVirt {kv.version}: {kv.explanation}")
        if kv.bytes is None:
            return inherited
        return EffectiveLimit(kv.bytes, "kubevirt", f"KubeVirt {kv.version}: {kv.explanation}")
    if lv.bytes is None:
        return EffectiveLimit(None, lv.source, lv.explanation)
    if lv.source == "none":
        return inherited
    source = "libvirt-formula" if lv.source == "formula" else lv.source
    return EffectiveLimit(lv.bytes, source, lv.explanation)


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
