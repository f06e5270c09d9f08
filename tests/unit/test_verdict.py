"""The verdict: required bytes against the limit QEMU really gets, headroom, and the
recommended hard_limit = max(required, footprint) + margin, rounded up to MiB."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from memlock_guard.accounting.ledger import Backing, Kind, Ledger, LedgerItem
from memlock_guard.accounting.modes import Mode
from memlock_guard.accounting.report import DEFAULT_MARGIN
from memlock_guard.accounting.verdict import EffectiveLimit, Fit, judge
from memlock_guard.commands.render import sentence
from memlock_guard.host import probe as hostmod

from ..conftest import PINNED_HOST
from .builders import GiB, KiB, MiB, domain_xml, hostdevs, report, round_up

MEMLOCK_64M = PINNED_HOST["inherited_memlock_bytes"]


def _ledger(ram: int, zero: int = 0) -> Ledger:
    items = [LedgerItem(source="ram", bytes=ram, backing=Backing.ANON, readonly=False,
                        kind=Kind.RAM, window=None, region=None, containers=1)]
    if zero:
        items.append(LedgerItem(source="tail", bytes=zero, backing=Backing.ZERO_FILL,
                                readonly=True, kind=Kind.FIRMWARE, window=None, region=None,
                                containers=1))
    return Ledger(tuple(items), 1, ("c",))


def _judge(ram: int, limit: int | None, *, zero: int = 0, mode: Mode = Mode.STRICT,
           footprint: int = 0, margin: int = 0, allowance: int | None = None):
    return judge(_ledger(ram, zero), EffectiveLimit(limit, "hard_limit", "test"), mode=mode,
                 mode_reason="test", footprint=footprint, margin=margin,
                 zero_page_allowance=allowance)


def test_fits_with_headroom():
    v = _judge(GiB, 2 * GiB)
    assert (v.fit, v.headroom) == (Fit.FITS, GiB)


def test_exactly_at_the_limit_fits_with_zero_headroom():
    v = _judge(GiB, GiB)
    assert (v.fit, v.headroom) == (Fit.FITS, 0)


def test_one_byte_over_is_short():
    v = _judge(GiB + 1, GiB)
    assert (v.fit, v.headroom) == (Fit.SHORT, -1)


def test_unlimited_has_no_headroom():
    v = _judge(GiB, None)
    assert (v.fit, v.headroom) == (Fit.UNLIMITED, None)


def test_the_mode_picks_which_requirement_is_judged():
    strict = _judge(GiB, GiB, zero=MiB, mode=Mode.STRICT)
    tolerant = _judge(GiB, GiB, zero=MiB, mode=Mode.TOLERANT)
    assert (strict.fit, strict.required) == (Fit.SHORT, GiB + MiB)
    assert (tolerant.fit, tolerant.required) == (Fit.FITS, GiB)
    assert strict.required_tolerant == tolerant.required_tolerant == GiB
    assert strict.required_strict == tolerant.required_strict == GiB + MiB


@pytest.mark.parametrize(("required", "footprint", "margin", "expected"), [
    (8 * GiB, 4 * GiB, 64 * MiB, 8 * GiB + 64 * MiB),       # the requirement dominates
    (4 * GiB, 5 * GiB, 64 * MiB, 5 * GiB + 64 * MiB),       # the footprint dominates
    (GiB + 1, 0, 0, GiB + MiB),                             # rounded up to a whole MiB
    (GiB + 3 * KiB, GiB, MiB, GiB + 2 * MiB),
    (GiB, GiB, 0, GiB),                                     # already whole MiB
])
def test_recommended_hard_limit(required, footprint, margin, expected):
    v = _judge(required, None, footprint=footprint, margin=margin)
    assert v.recommended_hard_limit == expected


@given(st.integers(min_value=0, max_value=2**45), st.integers(min_value=0, max_value=2**45),
       st.integers(min_value=0, max_value=2**30))
def test_recommended_covers_both_and_is_whole_mib(required, footprint, margin):
    v = _judge(required, None, footprint=footprint, margin=margin)
    assert v.recommended_hard_limit % MiB == 0
    assert max(required, footprint) + margin <= v.recommended_hard_limit
    assert v.recommended_hard_limit < max(required, footprint) + margin + MiB


# --- the effective limit, through assess() -------------------------------------------

def _host(**facts: Any) -> hostmod.HostFacts:
    return hostmod.collect(override={**PINNED_HOST, **facts})


def test_nothing_pins_so_nothing_is_required_and_the_inherited_limit_stays(pinned_host):
    r = report(pinned_host, domain_xml())
    v = r.verdict
    assert (v.required_strict, v.required_tolerant) == (0, 0)
    assert (v.limit.source, v.limit.bytes) == ("inherited", MEMLOCK_64M)
    assert (v.fit, v.headroom) == (Fit.FITS, MEMLOCK_64M)


def test_an_unlimited_inherited_limit_is_unlimited():
    r = report(_host(inherited_memlock_bytes=None), domain_xml())
    assert r.verdict.fit is Fit.UNLIMITED


def test_libvirt_formula_is_the_effective_limit(pinned_host):
    r = report(pinned_host, domain_xml(hostdevs(1), memory="4", unit="GiB"),
               libvirt_version=(10, 0, 0), mode=Mode.STRICT)
    v = r.verdict
    assert (v.limit.source, v.limit.bytes) == ("libvirt-formula", 4 * GiB + GiB)
    assert v.headroom == 5 * GiB - v.required_strict
    assert v.fit is Fit.FITS


def test_hard_limit_is_the_effective_limit_and_can_be_short(pinned_host):
    xml = domain_xml(hostdevs(1), memory="4", unit="GiB",
                     extra="<memtune><hard_limit unit='GiB'>4</hard_limit></memtune>")
    v = report(pinned_host, xml, mode=Mode.STRICT).verdict
    assert (v.limit.source, v.limit.bytes, v.fit) == ("hard_limit", 4 * GiB, Fit.SHORT)
    assert v.headroom == 4 * GiB - v.required_strict < 0


def test_locked_is_unlimited(pinned_host):
    xml = domain_xml(hostdevs(1), extra="<memoryBacking><locked/></memoryBacking>")
    v = report(pinned_host, xml).verdict
    assert (v.limit.source, v.fit, v.headroom) == ("locked", Fit.UNLIMITED, None)


def test_vIOMMU_with_three_devices_is_short_by_three_times_the_non_ram_bytes(pinned_host):
    # libvirt's factor (3) covers 3 x RAM; its 1 GiB must cover 3 x everything else.
    xml = domain_xml(hostdevs(3) + "<iommu model='intel'/>", memory="8", unit="GiB")
    r = report(pinned_host, xml, libvirt_version=(10, 0, 0), mode=Mode.STRICT)
    non_ram = r.verdict.required_strict - 3 * 8 * GiB
    assert r.verdict.limit.bytes == 3 * 8 * GiB + GiB
    assert r.verdict.headroom == GiB - non_ram


def test_in_a_kubevirt_pod_qemu_gets_libvirts_own_limit_when_it_fits_under_virt_handlers(
        pinned_host):
    # No vIOMMU: libvirt in the pod asks for memory + 1 GiB, below virt-handler's limit
    # (memory + overhead incl. 1 GiB), and sets QEMU's limit to exactly that.
    xml = domain_xml(hostdevs(2), memory="4", unit="GiB")
    r = report(pinned_host, xml, platform="kubevirt", kubevirt_version="1.9")
    assert r.libvirt.version == (11, 10, 0)  # the launcher's libvirt for KubeVirt 1.9
    assert r.verdict.limit.source == "kubevirt"
    assert r.verdict.limit.bytes == r.libvirt.bytes == 4 * GiB + GiB < r.kubevirt.bytes
    assert not r.verdict.limit.blocked
    main = report(pinned_host, xml, platform="kubevirt", kubevirt_version="main")
    assert main.kubevirt.unlimited
    assert main.verdict.limit.bytes == r.libvirt.bytes  # still libvirt's number


def test_in_a_kubevirt_pod_a_libvirt_limit_above_virt_handlers_blocks_the_start(pinned_host):
    # vIOMMU + 2 GPUs: libvirt asks for 2 x memory + 1 GiB; KubeVirt <= 1.8.2 gives
    # memory + overhead, so QEMU cannot start, whatever the ledger needs.
    xml = domain_xml(hostdevs(2) + "<iommu model='intel'/>", memory="4", unit="GiB")
    r = report(pinned_host, xml, platform="kubevirt", kubevirt_version="1.7")
    lim = r.verdict.limit
    assert lim.blocked and lim.demand == 2 * 4 * GiB + GiB and lim.bytes == r.kubevirt.bytes
    assert r.verdict.fit is Fit.SHORT
    assert r.verdict.headroom == lim.bytes - max(r.verdict.required, lim.demand)
    assert "cannot start" in lim.explanation
    fixed = report(pinned_host, xml, platform="kubevirt", kubevirt_version="1.8.3")
    assert not fixed.verdict.limit.blocked
    assert fixed.verdict.limit.bytes == 2 * 4 * GiB + GiB


# --- footprint and the recommended hard_limit, end to end -----------------------------

def test_footprint_covers_memory_page_tables_and_per_vcpu_overhead(pinned_host):
    small = report(pinned_host, domain_xml(hostdevs(1), memory="4", unit="GiB", vcpus=2))
    big = report(pinned_host, domain_xml(hostdevs(1), memory="8", unit="GiB", vcpus=6))
    assert big.verdict.footprint - small.verdict.footprint == \
        4 * GiB + (8 * GiB // 512 - 4 * GiB // 512) + 4 * 8 * MiB
    assert small.verdict.footprint > 4 * GiB + 4 * GiB // 512


def test_default_recommendation_is_the_requirement_plus_64_mib(pinned_host):
    v = report(pinned_host, domain_xml(hostdevs(3) + "<iommu model='intel'/>"),
               mode=Mode.STRICT).verdict
    assert v.required_strict > v.footprint  # three containers: the requirement dominates
    assert v.recommended_hard_limit == round_up(v.required_strict + DEFAULT_MARGIN, MiB)


def test_the_sentence_names_the_verdict_and_for_short_the_remedy(pinned_host):
    xml = domain_xml(hostdevs(1), extra="<memtune><hard_limit unit='GiB'>1</hard_limit>"
                                        "</memtune>")
    r = report(pinned_host, xml)
    assert r.verdict.fit is Fit.SHORT
    text = sentence(r)
    assert text.startswith("SHORT") and "\n" not in text
    assert str(r.verdict.recommended_hard_limit // KiB) in text  # KiB, as memtune takes it
    assert sentence(report(pinned_host, domain_xml(hostdevs(1)))).startswith("fits")
