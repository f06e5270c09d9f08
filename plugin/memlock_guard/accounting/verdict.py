"""The judgement: required bytes against the limit QEMU will really get.

Pure: a Ledger, the effective limit and the policy numbers in, a Verdict out.

Two amounts sit beside the requirement:
- the hotplug reserve (memory up to maxMemory in every container, and containers for
  the policy's ``<hotplug-reserve>`` VFIO devices) is in the recommended hard_limit but
  never in the fit: a VM libvirt would start is never refused for what it might
  hot-add later;
- ``uid_pinned``, what the other running QEMUs of the same uid already have charged to
  the user under iommufd user accounting, is in both: the kernel checks this QEMU's
  pins plus theirs against this QEMU's limit (backend.py).
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

from ..support.units import MiB, round_up
from .ledger import Ledger
from .modes import Mode


class Fit(StrEnum):
    """Whether the requirement fits under the limit QEMU gets."""

    FITS = "fits"
    SHORT = "short"
    UNLIMITED = "unlimited"


class EffectiveLimit(NamedTuple):
    bytes: int | None  # None: unlimited
    source: str  # hard_limit | locked | ppc64 | libvirt-formula | inherited | kubevirt ...
    explanation: str
    # What QEMU's limit is set to at launch when that must fit under ``bytes``: libvirt
    # inside a KubeVirt pod prlimits QEMU to its own number, and without
    # CAP_SYS_RESOURCE it cannot go above the hard limit virt-handler set, so the start
    # fails when this is larger than ``bytes``, whatever the ledger needs.
    demand: int | None = None

    @property
    def blocked(self) -> bool:
        """The start fails before QEMU runs: ``demand`` is above ``bytes``."""
        return self.demand is not None and self.bytes is not None and self.demand > self.bytes


class Verdict(NamedTuple):
    mode: Mode  # strict or tolerant (auto already resolved)
    mode_reason: str
    required_strict: int
    required_tolerant: int
    limit: EffectiveLimit
    fit: Fit
    headroom: int | None  # limit - required (or - the demand, if larger); None: unlimited
    footprint: int
    recommended_hard_limit: int
    memory_reserve: int = 0  # memory up to maxMemory, in every container
    vfio_reserve: int = 0  # the policy's <hotplug-reserve> VFIO devices
    uid_pinned: int = 0  # other QEMUs of this uid, under iommufd user accounting

    @property
    def required(self) -> int:
        return self.required_strict if self.mode is Mode.STRICT else self.required_tolerant

    @property
    def hotplug_reserve(self) -> int:
        return self.memory_reserve + self.vfio_reserve


def judge(ledger: Ledger, limit: EffectiveLimit, *, mode: Mode, mode_reason: str,
          footprint: int, margin: int, zero_page_allowance: int | None,
          reserve_containers: int = 0, uid_pinned: int = 0) -> Verdict:
    """``reserve_containers``: how many more containers the hotplug reserve holds room
    for; ``uid_pinned``: bytes already charged to this QEMU's user by others."""
    strict, tolerant = ledger.requirements(zero_page_allowance)
    required = strict if mode is Mode.STRICT else tolerant
    if limit.bytes is None:
        fit, headroom = Fit.UNLIMITED, None
    else:
        headroom = limit.bytes - max(required + uid_pinned, limit.demand or 0)
        fit = Fit.FITS if headroom >= 0 else Fit.SHORT
    memory_reserve = ledger.hotplug_charge
    vfio_reserve = 0
    if reserve_containers:
        one = ledger.one_container(zero_page_allowance, hotplug=True)
        vfio_reserve = reserve_containers * (one[0] if mode is Mode.STRICT else one[1])
    need = required + memory_reserve + vfio_reserve + uid_pinned
    recommended = round_up(max(need, footprint) + margin, MiB)
    return Verdict(mode, mode_reason, strict, tolerant, limit, fit, headroom, footprint,
                   recommended, memory_reserve, vfio_reserve, uid_pinned)
