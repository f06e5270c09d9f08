"""The judgement: required bytes against the limit QEMU will really get.

Pure: a Ledger, the effective limit and the policy numbers in, a Verdict out.
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

    @property
    def required(self) -> int:
        return self.required_strict if self.mode is Mode.STRICT else self.required_tolerant


def judge(ledger: Ledger, limit: EffectiveLimit, *, mode: Mode, mode_reason: str,
          footprint: int, margin: int, zero_page_allowance: int | None) -> Verdict:
    strict, tolerant = ledger.requirements(zero_page_allowance)
    required = strict if mode is Mode.STRICT else tolerant
    if limit.bytes is None:
        fit, headroom = Fit.UNLIMITED, None
    else:
        headroom = limit.bytes - max(required, limit.demand or 0)
        fit = Fit.FITS if headroom >= 0 else Fit.SHORT
    recommended = round_up(max(required, footprint) + margin, MiB)
    return Verdict(mode, mode_reason, strict, tolerant, limit, fit, headroom, footprint,
                   recommended)
