"""libvirt's RLIMIT_MEMLOCK (qemuDomainGetMemLockLimitBytes), by libvirt version.

The first test reproduces every case of libvirt's own tests/qemumemlocktest.c with our
own XMLs (tests/data/memlock/), against libvirt's published expectations in bytes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from memlock_guard.baselines.libvirt import LIBVIRT_UNLIMITED, libvirt_limit
from memlock_guard.domain import parse_domain

from .builders import (
    VF_NET,
    GiB,
    KiB,
    MiB,
    domain,
    hostdevs,
    nvme_disks,
    vdpa_nets,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "memlock"
UNLIMITED = None  # libvirt's VIR_DOMAIN_MEMORY_PARAM_UNLIMITED; we report no bytes

# tests/qemumemlocktest.c mymain(), libvirt 10.x (docs/sources.md section 1).
QEMUMEMLOCKTEST = {
    "pc-kvm": 0,
    "pc-tcg": 0,
    "pc-hardlimit": 2147483648,
    "pc-locked": UNLIMITED,
    "pc-hostdev": 2147483648,
    "pc-hostdev-nvme": 3221225472,
    "pc-hardlimit+locked": 2147483648,
    "pc-hardlimit+hostdev": 2147483648,
    "pc-hardlimit+locked+hostdev": 2147483648,
    "pc-locked+hostdev": UNLIMITED,
    "pseries-kvm": 20971520,
    "pseries-tcg": 0,
    "pseries-hardlimit": 2147483648,
    "pseries-locked": UNLIMITED,
    "pseries-hostdev": 4320133120,
    "pseries-hardlimit+locked": 2147483648,
    "pseries-hardlimit+hostdev": 2147483648,
    "pseries-hardlimit+locked+hostdev": 2147483648,
    "pseries-locked+hostdev": UNLIMITED,
}
LATEST_TEST_VERSION = (10, 7, 0)


def test_every_case_has_a_file_and_no_file_is_left_over():
    assert sorted(p.stem for p in DATA.glob("*.xml")) == sorted(QEMUMEMLOCKTEST)
    assert len(QEMUMEMLOCKTEST) == 19


@pytest.mark.parametrize("case", sorted(QEMUMEMLOCKTEST))
def test_qemumemlocktest(case):
    d = parse_domain((DATA / f"{case}.xml").read_bytes())
    got = libvirt_limit(d, LATEST_TEST_VERSION)
    assert got.bytes == QEMUMEMLOCKTEST[case]
    assert got.unlimited == (QEMUMEMLOCKTEST[case] is UNLIMITED)


def test_the_pseries_expectations_follow_from_the_formula():
    # getPPC64MemLockLimitBytes in KiB: base = maxMemory/128 + 4 MiB x nPHB + 8 MiB.
    mem = 1048576
    one_phb = mem // 128 + 4096 * 1 + 8192  # the default PHB only
    assert one_phb * KiB == QEMUMEMLOCKTEST["pseries-kvm"]
    two_phb = mem // 128 + 4096 * 2 + 8192  # + the PHB the hostdev is isolated on
    passthrough = max(2 * 1024 * 1024 * 2, mem + mem // 512 * 2 + 8192)
    assert (two_phb + passthrough) * KiB == QEMUMEMLOCKTEST["pseries-hostdev"]


def test_unlimited_is_libvirts_constant():
    assert LIBVIRT_UNLIMITED == (2**63 - 1) >> 10


# --- the x86 formula, version by version -------------------------------------------

MEM = 4 * GiB
IOMMU = "<iommu model='intel'/>"


def _limit(devices: str, version: tuple[int, int, int], **kw: object) -> int | None:
    return libvirt_limit(domain(devices, memory="4", unit="GiB", **kw), version).bytes


@pytest.mark.parametrize(("devices", "factor"), [
    ("", 0),
    (hostdevs(1), 1),
    (hostdevs(3), 1),                         # one shared container
    (hostdevs(3) + IOMMU, 3),                 # one per device behind a vIOMMU
    ("".join(VF_NET.format(n=i) for i in range(2)) + IOMMU, 2),
    (vdpa_nets(2), 2),
    (hostdevs(2) + vdpa_nets(1), 2),
    (hostdevs(2) + IOMMU + vdpa_nets(1), 3),
    (nvme_disks(1), 1),
    (hostdevs(1) + nvme_disks(2), 3),
    (hostdevs(2) + IOMMU + nvme_disks(1) + vdpa_nets(1), 4),
])
def test_current_formula_is_factor_times_memory_plus_one_gib_once(devices, factor):
    expected = factor * MEM + GiB if factor else 0
    assert _limit(devices, (10, 0, 0)) == expected
    assert _limit(devices, (12, 2, 0)) == expected


@pytest.mark.parametrize("version", [(7, 2, 0), (8, 0, 0), (8, 6, 0)])
def test_before_8_7_any_device_means_memory_plus_one_gib(version):
    for devices in (hostdevs(1), hostdevs(3) + IOMMU, vdpa_nets(2), nvme_disks(2),
                    hostdevs(2) + nvme_disks(1) + vdpa_nets(1)):
        assert _limit(devices, version) == MEM + GiB, devices
    assert _limit("", version) == 0


def test_vdpa_raised_the_limit_only_from_7_2():
    assert _limit(vdpa_nets(1), (7, 1, 0)) == 0
    assert _limit(vdpa_nets(1), (7, 2, 0)) == MEM + GiB


def test_8_7_counts_vfio_per_device_with_a_viommu_and_each_vdpa():
    assert _limit(hostdevs(3) + IOMMU, (8, 7, 0)) == 3 * MEM + GiB
    assert _limit(hostdevs(3), (8, 7, 0)) == MEM + GiB
    assert _limit(vdpa_nets(2) + hostdevs(1), (8, 7, 0)) == 3 * MEM + GiB


def test_nvme_joins_the_factor_in_9_3():
    # 8.7 .. 9.2 dropped NVMe disks from the count; 9.3 adds one per disk.
    assert _limit(hostdevs(1) + nvme_disks(1), (9, 2, 0)) == MEM + GiB
    assert _limit(nvme_disks(1), (9, 2, 0)) == 0
    assert _limit(hostdevs(1) + nvme_disks(1), (9, 3, 0)) == 2 * MEM + GiB
    assert _limit(nvme_disks(2), (9, 3, 0)) == 2 * MEM + GiB


def test_libvirt_10_10_adds_a_viommu_for_more_than_255_vcpus_on_q35():
    many = {"vcpus": 288, "machine": "pc-q35-9.0"}
    assert _limit(hostdevs(2), (10, 9, 0), **many) == MEM + GiB
    assert _limit(hostdevs(2), (10, 10, 0), **many) == 2 * MEM + GiB
    assert _limit(hostdevs(2), (10, 10, 0), vcpus=255, machine="q35") == MEM + GiB
    assert _limit(hostdevs(2), (10, 10, 0), vcpus=288, machine="pc-i440fx-9.0") == MEM + GiB


def test_memory_total_includes_memory_devices_but_not_max_memory():
    dimm = "<memory model='dimm'><target><size unit='GiB'>2</size><node>0</node></target></memory>"
    cpu = "<maxMemory slots='4' unit='GiB'>64</maxMemory>"
    assert _limit(hostdevs(1) + dimm, (10, 0, 0), extra=cpu) == MEM + GiB


def test_at_start_memory_is_aligned_to_1_mib_on_x86():
    d = domain(hostdevs(1), memory="1048577", unit="KiB")  # 1 GiB + 1 KiB
    assert libvirt_limit(d, (10, 0, 0)).bytes == GiB + MiB + GiB
    assert libvirt_limit(d, (10, 0, 0), at_start=False).bytes == GiB + KiB + GiB


# --- precedence ----------------------------------------------------------------------

HARD = "<memtune><hard_limit unit='GiB'>7</hard_limit></memtune>"
LOCKED = "<memoryBacking><locked/></memoryBacking>"


@pytest.mark.parametrize("extra", [HARD, HARD + LOCKED])
@pytest.mark.parametrize("devices", ["", hostdevs(3) + IOMMU, nvme_disks(1)])
def test_hard_limit_wins_over_everything(extra, devices):
    got = libvirt_limit(domain(devices, memory="4", unit="GiB", extra=extra), (10, 0, 0))
    assert (got.bytes, got.source) == (7 * GiB, "hard_limit")


@pytest.mark.parametrize("devices", ["", hostdevs(2)])
def test_locked_means_unlimited(devices):
    got = libvirt_limit(domain(devices, extra=LOCKED), (10, 0, 0))
    assert got.unlimited and got.bytes is None and got.source == "locked"


def test_hard_limit_at_libvirts_unlimited_is_not_set():
    unlimited = f"<memtune><hard_limit unit='KiB'>{LIBVIRT_UNLIMITED}</hard_limit></memtune>"
    got = libvirt_limit(domain(hostdevs(1), extra=unlimited), (10, 0, 0))
    assert got.source == "formula" and got.bytes == GiB + GiB


# --- ppc64 ---------------------------------------------------------------------------

def _ppc(devices: str = "", *, memory: str = "4", virt: str = "kvm", extra: str = ""):
    return libvirt_limit(domain(devices, memory=memory, unit="GiB", arch="ppc64",
                                machine="pseries", virt=virt, extra=extra), (10, 0, 0))


def _ppc_expected(mem_kib: int, n_phb: int, passthrough: bool, max_kib: int | None = None):
    max_kib = max_kib or mem_kib
    base = max_kib // 128 + 4096 * n_phb + 8192
    pt = max(2 * 1024 * 1024 * n_phb, mem_kib + mem_kib // 512 * n_phb + 8192) \
        if passthrough else 0
    return (base + pt) * KiB


def test_ppc64_counts_the_default_phb_when_none_is_listed():
    got = _ppc()
    assert (got.source, got.bytes) == ("ppc64", _ppc_expected(4 * 1024 * 1024, 1, False))


def test_ppc64_counts_listed_phbs():
    phbs = "".join(f"<controller type='pci' index='{i}' model='pci-root'>"
                   f"<model name='spapr-pci-host-bridge'/><target index='{i}'/></controller>"
                   for i in range(3))
    assert _ppc(phbs).bytes == _ppc_expected(4 * 1024 * 1024, 3, False)


def test_ppc64_passthrough_term_with_a_phb_per_isolated_hostdev():
    # Two hostdevs without a guest address: the default PHB plus one each.
    assert _ppc(hostdevs(2)).bytes == _ppc_expected(4 * 1024 * 1024, 3, True)


def test_ppc64_large_memory_passthrough_term_is_memory_based():
    mem = 64 * 1024 * 1024  # 64 GiB: memory + memory/512 x nPHB + 8 MiB beats 2 GiB x nPHB
    assert _ppc(hostdevs(1), memory="64").bytes == _ppc_expected(mem, 2, True)


def test_ppc64_uses_max_memory_for_the_base():
    extra = "<maxMemory slots='4' unit='GiB'>32</maxMemory>"
    assert _ppc(memory="4", extra=extra).bytes == _ppc_expected(
        4 * 1024 * 1024, 1, False, max_kib=32 * 1024 * 1024)


def test_ppc64_nvme_and_vdpa_nets_trigger_the_passthrough_term_without_a_factor():
    expected = _ppc_expected(4 * 1024 * 1024, 1, True)
    assert _ppc(nvme_disks(2)).bytes == expected
    assert _ppc(vdpa_nets(3)).bytes == expected


def test_ppc64_tcg_uses_the_generic_formula():
    assert _ppc(virt="qemu").bytes == 0
    assert _ppc(hostdevs(1), virt="qemu").bytes == 4 * GiB + GiB


def test_ppc64_hard_limit_and_locked_still_come_first():
    assert _ppc(hostdevs(1), extra=HARD).bytes == 7 * GiB
    assert _ppc(hostdevs(1), extra=LOCKED).unlimited


def test_ppc64_interface_hostdev_is_passthrough_and_gets_its_own_phb():
    # <interface type='hostdev'> is a PCI hostdev to libvirt (it sits in def->hostdevs).
    assert _ppc(VF_NET.format(n=1)).bytes == _ppc_expected(4 * 1024 * 1024, 2, True)


def test_ppc64_a_hostdev_with_a_guest_address_gets_no_new_phb():
    dev = hostdevs(1).replace("</hostdev>", "<address type='pci' domain='0x0000' bus='0x00'"
                              " slot='0x05' function='0x0'/></hostdev>")
    assert _ppc(dev).bytes == _ppc_expected(4 * 1024 * 1024, 1, True)


def test_ppc64_every_bus_up_to_the_highest_named_is_a_phb():
    # libvirt's pseries-many-buses-1: a device on bus 1 makes libvirt add PHB 1.
    scsi = ("<controller type='scsi' model='virtio-scsi'>"
            "<address type='pci' domain='0x0000' bus='0x02' slot='0x01' function='0x0'/>"
            "</controller>")
    assert _ppc(scsi).bytes == _ppc_expected(4 * 1024 * 1024, 3, False)
    # pseries-phb-default-missing: PHBs 1 and 2 listed, 0 is added.
    listed = ("<controller type='pci' index='1' model='pci-root'/>"
              "<controller type='pci' index='2' model='pci-root'/>")
    assert _ppc(listed).bytes == _ppc_expected(4 * 1024 * 1024, 3, False)
