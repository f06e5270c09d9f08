"""Hostile values in a well-formed domain XML, in-process: numbers, units, duplicates.

The rules are libvirt 9.0's, each checked with ``virsh define`` + ``dumpxml`` against
a real libvirtd (the expected values below are what libvirt kept or refused):
- numbers are read by strtoull: leading whitespace and '+' pass; '-', a trailing
  space, hex and decimals are errors; memory ends below 2**53 KiB after rounding up;
- duplicate elements: the first wins (``<memory>`` twice), but lookups go across
  repeated parents (``./memtune/hard_limit[1]``, every ``<devices>`` block's devices);
- an element's value is its XPath string-value (``10<x/>24`` is 1024);
- an empty value is an absent one.
"""

from __future__ import annotations

import pytest
from memlock_guard.accounting.engine import build_ledger
from memlock_guard.domain import parse_domain
from memlock_guard.domain.model import MAX_DEVICES
from memlock_guard.support.errors import InputError
from memlock_guard.support.units import MAX_MEMORY_BYTES, parse_scaled

from .hostile_cases import HOSTDEV, domain, hostdevs

KiB, GiB = 1024, 1024**3


def _mem(memory: str, rest: str = "") -> bytes:
    return domain(hostdevs(1)).replace("<memory unit='GiB'>4</memory>", memory + rest).encode()


@pytest.mark.parametrize(("memory", "expected"), [
    ("<memory>1048576</memory>", 1048576 * KiB),
    ("<memory> 1048576</memory>", 1048576 * KiB),      # leading space: strtoull skips it
    ("<memory>\t\n+1048576</memory>", 1048576 * KiB),  # and takes one '+'
    ("<memory unit='KB'>1025</memory>", 1001 * KiB),   # 1,025,000 B rounds up to 1001 KiB
    ("<memory unit='kib'>1000</memory>", 1000 * KiB),
    ("<memory unit='bytes'>1025</memory>", 2 * KiB),
    ("<memory unit='Bytes'>1048577</memory>", 1025 * KiB),
    ("<memory unit=''>1048576</memory>", 1048576 * KiB),  # empty unit: the default
    ("<memory>10<!-- c -->24</memory>", 1024 * KiB),
    ("<memory>10<x/>24</memory>", 1024 * KiB),          # string-value, not .text
    ("<memory>0001048576</memory>", 1048576 * KiB),
    ("<memory unit='b'>9223372036854774784</memory>", 9007199254740991 * KiB),
    ("<memory unit='EiB'>7</memory>", 7881299347898368 * KiB),
    ("<memory unit='EB'>9</memory>", 8789062500000000 * KiB),
    ("<memory>1048576</memory><memory>2097152</memory>", 1048576 * KiB),  # first wins
])
def test_memory_is_read_as_libvirt_reads_it(memory: str, expected: int) -> None:
    assert parse_domain(_mem(memory)).memory == expected


@pytest.mark.parametrize(("memory", "message"), [
    ("<memory>1048576 </memory>", "invalid value"),   # libvirt: Invalid value '1048576 '
    ("<memory>-0</memory>", "invalid value"),
    ("<memory>0x100000</memory>", "invalid value"),
    ("<memory>1e6</memory>", "invalid value"),
    ("<memory>\u0661\u0662</memory>", "invalid value"),  # Arabic-Indic digits
    ("<memory unit='ki'>1048576</memory>", "unknown unit"),
    ("<memory unit=' KiB'>1048576</memory>", "unknown unit"),
    ("<memory unit='\u212aiB'>1048576</memory>", "unknown unit"),  # Kelvin sign
    ("<memory>0</memory>", "zero"),
    ("<memory></memory>", "no <memory>"),
    ("<memory unit='b'>9223372036854775807</memory>", "too large"),  # 2**53 KiB rounded
    ("<memory unit='EiB'>8</memory>", "too large"),
    ("<memory>18446744073709551616</memory>", "too large"),
    ("<memory>" + "1" * 5000 + "</memory>", "too large"),  # beyond Python's int() digits
])
def test_memory_values_libvirt_refuses_are_refused(memory: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_domain(_mem(memory))


def test_parse_scaled_bound_is_2_to_the_53_kib() -> None:
    assert parse_scaled(str(MAX_MEMORY_BYTES), "b", what="x") == MAX_MEMORY_BYTES
    with pytest.raises(InputError):
        parse_scaled(str(MAX_MEMORY_BYTES + 1), "b", what="x")


def test_hostdevs_of_every_devices_block_count() -> None:
    """libvirt gathers ./devices/hostdev: two <devices> blocks, two VFIO devices."""
    xml = domain(HOSTDEV.format(bus=1, slot=0, fn=0)).replace(
        "</devices>", f"</devices><devices>{HOSTDEV.format(bus=2, slot=0, fn=0)}"
                      "<iommu model='intel'/></devices>")
    d = parse_domain(xml.encode())
    assert len(d.vfio_devices) == 2
    assert d.iommu == "intel"


def test_hard_limit_is_the_first_across_memtune_blocks() -> None:
    xml = _mem("<memory unit='GiB'>4</memory>",
               "<memtune><soft_limit>1</soft_limit></memtune>"
               "<memtune><hard_limit>2097152</hard_limit><hard_limit>1</hard_limit></memtune>")
    assert parse_domain(xml).memtune.hard_limit == 2097152 * KiB


def test_locked_in_a_second_memory_backing_block_counts() -> None:
    xml = _mem("<memory unit='GiB'>4</memory>",
               "<memoryBacking><nosharepages/></memoryBacking>"
               "<memoryBacking><locked/></memoryBacking>")
    assert parse_domain(xml).memory_backing.locked


def test_os_fields_are_read_across_repeated_os_blocks() -> None:
    xml = domain().replace(
        "<os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>",
        "<os><loader type='rom'>/x/bios.bin</loader></os>"
        "<os firmware='efi'><type arch='i686' machine='pc-i440fx-7.2'>hvm</type></os>")
    d = parse_domain(xml.encode())
    assert (d.arch, d.machine.name) == ("i686", "pc-i440fx-7.2")
    assert d.firmware.loader_path == "/x/bios.bin" and d.firmware.autoselect == "efi"


def test_empty_memtune_value_is_not_set() -> None:
    xml = _mem("<memory unit='GiB'>4</memory>", "<memtune><hard_limit></hard_limit></memtune>")
    assert parse_domain(xml).memtune.hard_limit is None


@pytest.mark.parametrize(("attrs", "expected"), [
    ("vram=''", None),             # libvirt: as if unset
    ("vram=' 16384'", 16384 * KiB),
    ("vram='+16384'", 16384 * KiB),
    ("vram='4294967295'", 4294967295 * KiB),  # UINT_MAX KiB: the most libvirt keeps
])
def test_video_sizes_are_unsigned_int_kib(attrs: str, expected: int | None) -> None:
    d = parse_domain(domain(f"<video><model type='vga' {attrs}/></video>").encode())
    assert d.videos[0].vram == expected


@pytest.mark.parametrize("attrs", ["vram='16384 '", "vram='4294967296'", "vram='-1'",
                                   "heads='x'", "heads='4294967296'", "ram='1e3'"])
def test_video_values_libvirt_refuses_are_refused(attrs: str) -> None:
    with pytest.raises(InputError, match="<video><model>"):
        parse_domain(domain(f"<video><model type='qxl' {attrs}/></video>").encode())


def test_largest_video_sizes_stay_in_range() -> None:
    """UINT_MAX KiB everywhere: every ledger number still fits in a signed 64-bit int."""
    from memlock_guard.host import probe as host

    v = "vram='4294967295' ram='4294967295' vgamem='4294967295' vram64='4294967295'"
    d = parse_domain(domain(f"<video><model type='qxl' {v}/></video>"
                            f"<video><model type='bochs' {v}/></video>"
                            f"<video><model type='vga' {v}/></video>"
                            + hostdevs(1)).encode())
    ledger = build_ledger(d, host.collect(override={"probe_host": False}))
    assert all(0 <= i.charged < 2**63 for i in ledger.items)


@pytest.mark.parametrize(("vcpu", "ok"), [(" +4", True), ("4294967295", True), ("4 ", False),
                                          ("-1", False), ("4294967296", False), ("0", False)])
def test_vcpu_is_an_unsigned_int(vcpu: str, ok: bool) -> None:
    xml = domain().replace("<vcpu>2</vcpu>", f"<vcpu>{vcpu}</vcpu>").encode()
    if ok:
        assert parse_domain(xml).vcpus == int(vcpu)
    else:
        with pytest.raises(InputError, match="<vcpu>"):
            parse_domain(xml)


def test_more_devices_than_the_cap_are_refused() -> None:
    with pytest.raises(InputError, match=f"more than the {MAX_DEVICES}"):
        parse_domain(domain("<controller type='usb'/>" * (MAX_DEVICES + 1)).encode())
    # (controllers are only mapped on ppc64: count disks)
    assert len(parse_domain(domain("<disk type='file' device='cdrom'/>" * MAX_DEVICES)
                            .encode()).disks) == MAX_DEVICES


def test_numa_cells_summing_past_libvirts_range_are_refused() -> None:
    xml = domain().replace("<os>", "<cpu><numa>"
                           "<cell id='0' cpus='0' memory='8' unit='EB'/>"
                           "<cell id='1' cpus='1' memory='8' unit='EB'/></numa></cpu><os>")
    with pytest.raises(InputError, match="libvirt can express"):
        parse_domain(xml.encode())
