"""The judgement: required bytes against the limit QEMU will really get.

Pure: a Ledger, the effective limit and the policy numbers in, a Verdict out.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

from ..support.units import MiB, round_up
from .ledger import Ledger, Mode


class Outcome(StrEnum):
    FITS = "fits"
    SHORT = "short"
    UNLIMITED = "unlimited"


class EffectiveLimit(NamedTuple):
    bytes: int | None  # None: unlimited
    source: str  # hard_limit | locked | ppc64 | libvirt-formula | inherited | kubevirt ...
    explanation: str


class Verdict(NamedTuple):
    mode: Mode  # strict or tolerant (auto already resolved)
    mode_reason: str
    required_strict: int
    required_tolerant: int
    limit: EffectiveLimit
    outcome: Outcome
    headroom: int | None  # limit - required; None when unlimited
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
        outcome, headroom = Outcome.UNLIMITED, None
    else:
        headroom = limit.bytes - required
        outcome = Outcome.FITS if headroom >= 0 else Outcome.SHORT
    recommended = round_up(max(required, footprint) + margin, MiB)
    return Verdict(mode, mode_reason, strict, tolerant, limit, outcome, headroom, footprint,
                   recommended)
