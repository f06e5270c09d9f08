"""Accounting modes: strict charges everything, tolerant forgives zero-fill pages up to
an allowance, auto decides from the host; and the peak over boot-time windows."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from memlock_guard.accounting.ledger import Backing, Kind, Ledger, LedgerItem, Window
from memlock_guard.accounting.modes import Mode, resolve
from memlock_guard.host import probe as hostmod

from ..conftest import PINNED_HOST
from .builders import GiB, KiB, MiB, hostdevs, ledger


def item(n: int, backing: Backing = Backing.ANON, *, containers: int = 1,
         window: Window | None = None, region: str | None = None) -> LedgerItem:
    ro = backing in (Backing.FILE_ROM, Backing.ZERO_FILL)
    return LedgerItem(source=f"{backing.value} {n} {region}", bytes=n, backing=backing,
                      readonly=ro, kind=Kind.RAM if backing is Backing.ANON else Kind.OTHER,
                      window=window, region=region, containers=containers)


def led(*items: LedgerItem) -> Ledger:
    n = max((i.containers for i in items), default=0)
    return Ledger(items=tuple(items), containers=n,
                  container_reasons=tuple(f"c{k}" for k in range(n)))


RAM = item(GiB)
TAIL = item(MiB, Backing.ZERO_FILL)  # an always-mapped zero-fill tail (e.g. pc.rom)


def test_strict_charges_zero_fill_pages():
    assert led(RAM, TAIL).required(Mode.STRICT) == GiB + MiB


def test_tolerant_forgives_all_zero_fill_without_an_allowance():
    assert led(RAM, TAIL).required(Mode.TOLERANT) == GiB
    assert led(RAM, TAIL).required(Mode.TOLERANT, None) == GiB


@pytest.mark.parametrize(("allowance", "charged_zero"), [
    (0, MiB), (256 * KiB, MiB - 256 * KiB), (MiB, 0), (4 * MiB, 0)])
def test_tolerant_forgives_zero_fill_only_up_to_the_allowance(allowance, charged_zero):
    assert led(RAM, TAIL).required(Mode.TOLERANT, allowance) == GiB + charged_zero


def test_file_backed_rom_pages_are_never_forgiven():
    rom = item(200 * KiB, Backing.FILE_ROM)
    assert led(RAM, rom).required(Mode.TOLERANT) == GiB + 200 * KiB


def test_every_item_is_charged_per_container():
    three = led(item(GiB, containers=3), item(MiB, Backing.ZERO_FILL, containers=3))
    assert three.required(Mode.STRICT) == 3 * (GiB + MiB)
    assert three.required(Mode.TOLERANT) == 3 * GiB
    # The allowance is a number of charged bytes, whatever the container count.
    assert three.required(Mode.TOLERANT, MiB) == 3 * GiB + 2 * MiB


def test_auto_is_rejected_by_the_ledger():
    with pytest.raises(ValueError, match="auto"):
        led(RAM).required(Mode.AUTO)


# --- boot-time windows: one ROM BAR at a time ---------------------------------------

def _bar(region: str, written: int, tail: int) -> tuple[LedgerItem, LedgerItem]:
    return (item(written, Backing.FILE_ROM, window=Window.BOOT_ROM, region=region),
            item(tail, Backing.ZERO_FILL, window=Window.BOOT_ROM, region=region))


def test_rom_bars_are_mapped_one_at_a_time_so_only_the_largest_counts():
    a = _bar("nic", 200 * KiB, 56 * KiB)    # a 256 KiB BAR
    b = _bar("vga", 40 * KiB, 24 * KiB)     # a 64 KiB BAR
    ledger_ = led(RAM, *a, *b)
    assert ledger_.required(Mode.STRICT) == GiB + 256 * KiB
    assert ledger_.required(Mode.TOLERANT) == GiB + 200 * KiB
    # Per phase, charge - min(zero-fill, allowance): the nic phase still sets the peak.
    assert ledger_.required(Mode.TOLERANT, 16 * KiB) == GiB + 256 * KiB - 16 * KiB


def test_a_window_phase_and_an_always_mapped_item_add_up():
    pre = item(128 * KiB, Backing.FILE_ROM, window=Window.PRE_FIRMWARE, region="pre-firmware")
    pc_rom = item(128 * KiB, Backing.ZERO_FILL, window=Window.PRE_FIRMWARE,
                  region="pre-firmware")
    bar = _bar("nic", 200 * KiB, 56 * KiB)
    ledger_ = led(RAM, pre, pc_rom, *bar)
    # The pre-firmware phase (256 KiB) and the nic BAR (256 KiB) tie; never both.
    assert ledger_.required(Mode.STRICT) == GiB + 256 * KiB


ITEMS = st.lists(
    st.builds(
        item,
        st.integers(min_value=0, max_value=64 * MiB),
        st.sampled_from(list(Backing)),
        containers=st.just(2),
        window=st.sampled_from([None, Window.BOOT_ROM, Window.PRE_FIRMWARE]),
        region=st.sampled_from([None, "a", "b", "c"]),
    ),
    max_size=12,
)


@given(ITEMS, st.integers(min_value=0, max_value=128 * MiB))
def test_strict_is_never_below_tolerant_and_the_allowance_is_monotone(items, allowance):
    ledger_ = led(*items)
    strict = ledger_.required(Mode.STRICT)
    all_forgiven = ledger_.required(Mode.TOLERANT)
    some = ledger_.required(Mode.TOLERANT, allowance)
    more = ledger_.required(Mode.TOLERANT, allowance + MiB)
    assert strict >= some >= more >= all_forgiven >= 0
    assert ledger_.required(Mode.TOLERANT, 0) == strict
    assert strict - some <= allowance


@given(ITEMS)
def test_peak_never_exceeds_the_sum_of_everything(items):
    ledger_ = led(*items)
    assert ledger_.required(Mode.STRICT) <= sum(i.charged for i in items)
    always = sum(i.charged for i in items if i.window is None)
    assert ledger_.required(Mode.STRICT) >= always


def test_real_ledger_strict_is_tolerant_plus_the_largest_phases_zero_fill(pinned_host):
    one = ledger(pinned_host, hostdevs(1) + "<video><model type='qxl'/></video>"
                 "<interface type='network'><model type='virtio'/></interface>")
    assert one.required(Mode.STRICT) > one.required(Mode.TOLERANT) > GiB


# --- auto ----------------------------------------------------------------------------

def _host(**facts: Any) -> hostmod.HostFacts:
    return hostmod.collect(override={**PINNED_HOST, **facts})


@pytest.mark.parametrize(("kernel", "mode"), [
    ("6.1.0", Mode.TOLERANT), ("5.14.0-362.el9.x86_64", Mode.TOLERANT),
    ("4.19.0", Mode.TOLERANT), ("6.2.0", Mode.STRICT), ("6.8.0-45-generic", Mode.STRICT),
    ("10.0", Mode.STRICT),
])
def test_auto_follows_the_kernel_version(kernel, mode):
    got, why = resolve(Mode.AUTO, _host(kernel_release=kernel))
    assert got is mode and kernel.split("-")[0][:3] in why


def test_auto_with_an_unknown_kernel_is_strict():
    assert resolve(Mode.AUTO, _host(kernel_release="weird"))[0] is Mode.STRICT


@pytest.mark.parametrize(("kernel", "value", "mode"), [
    ("6.1.0", "Y", Mode.STRICT), ("6.8.0", "N", Mode.TOLERANT), ("6.8.0", "0", Mode.TOLERANT),
    ("5.10.0", "1", Mode.STRICT),
])
def test_auto_prefers_a_module_parameter_over_the_kernel_version(kernel, value, mode):
    host = _host(kernel_release=kernel, vfio_iommu_type1={"strict": value})
    got, why = resolve(Mode.AUTO, host)
    assert got is mode and "strict" in why


@pytest.mark.parametrize("mode", [Mode.STRICT, Mode.TOLERANT])
def test_a_configured_mode_is_kept_whatever_the_host(mode):
    assert resolve(mode, _host(kernel_release="6.8.0", vfio_iommu_type1={"strict": "N"}))[0] \
        is mode
