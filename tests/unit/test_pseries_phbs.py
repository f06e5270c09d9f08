"""pSeries PHBs as libvirt 9.0 assigns them: an empty listed PHB adopts an isolated device.

The table is the one measured with `virsh define` on libvirt 9.0 (docs/sources.md §11,
and tests/e2e/test_pseries_define.py does it again); the libvirt cases are its own
tests/qemuxml2argvdata/pseries-hostdevs-{1,2,3} with virpcimock's IOMMU groups
(0001:01:00.0 and .1 in group 5, 0005:90:01.0 in group 7) and the PHBs of their
.ppc64-latest.args files.
"""

from __future__ import annotations

import pytest
from memlock_guard.baselines.libvirt import libvirt_limit, pseries_phbs

from .builders import KiB, domain

# libvirt's tests/virpcimock.c (9.0 and 10.x): MAKE_PCI_DEVICE(address, ..., IOMMU group).
VIRTPCIMOCK_GROUPS = {
    "0000:00:00.0": 0, "0000:00:01.0": 1, "0000:00:02.0": 2, "0000:00:03.0": 3,
    "0001:00:00.0": 4, "0001:01:00.0": 5, "0001:01:00.1": 5, "0005:80:00.0": 6,
    "0005:90:01.0": 7, "0005:90:01.1": 7, "0005:90:01.2": 7, "0005:90:01.3": 7,
    "0000:0a:01.0": 8, "0000:0a:02.0": 8, "0000:0a:03.0": 8, "0000:06:12.0": 9,
    "0000:06:12.1": 10, "0000:06:12.2": 11, "0021:de:1f.0": 12, "0021:de:1f.1": 13,
    "0000:01:00.0": 14, "0000:02:00.0": 15, "0000:03:00.0": 16,
}


def phb(index: int) -> str:
    return (f"<controller type='pci' index='{index}' model='pci-root'>"
            f"<model name='spapr-pci-host-bridge'/><target index='{index}'/></controller>")


def hostdev(source: str, guest_bus: int | None = None, slot: int = 1) -> str:
    d, b, sf = source.split(":")
    s, f = sf.split(".")
    guest = ("" if guest_bus is None else
             f"<address type='pci' domain='0x0000' bus='{guest_bus:#04x}' slot='{slot:#04x}'"
             " function='0x0'/>")
    return (f"<hostdev mode='subsystem' type='pci' managed='yes'><driver name='vfio'/>"
            f"<source><address domain='0x{d}' bus='0x{b}' slot='0x{s}' function='0x{f}'/>"
            f"</source>{guest}</hostdev>")


def vf(source: str) -> str:
    d, b, sf = source.split(":")
    s, f = sf.split(".")
    return (f"<interface type='hostdev' managed='yes'><driver name='vfio'/><source>"
            f"<address type='pci' domain='0x{d}' bus='0x{b}' slot='0x{s}' function='0x{f}'/>"
            "</source><mac address='52:54:00:6d:90:02'/></interface>")


def isolated(n: int) -> str:
    return "".join(hostdev(f"0000:{0x10 + i:02x}:00.0") for i in range(n))


def pseries(devices: str):
    return domain(devices, memory="4", unit="GiB", arch="ppc64", machine="pseries")


@pytest.mark.parametrize(("listed", "n", "phbs"), [
    ((), 1, 2), ((), 2, 3),
    ((0, 1), 0, 2),
    ((0, 1), 1, 2),  # issue 15: the hostdev adopts PHB 1, no third PHB
    ((0, 1), 2, 3), ((0, 1), 3, 4),
    ((0, 1, 2), 2, 3), ((0, 1, 2), 3, 4),
    ((1,), 1, 2),  # libvirt adds PHB 0; PHB 1 adopts
])
def test_empty_listed_phbs_adopt_isolated_devices(listed, n, phbs):
    devices = "".join(phb(i) for i in listed) + isolated(n)
    assert pseries_phbs(pseries(devices)) == phbs


def test_listed_phbs_and_n_isolated_hostdevs_give_max_2_n_plus_1():
    for n in range(6):
        assert pseries_phbs(pseries(phb(0) + phb(1) + isolated(n))) == max(2, n + 1)


def test_emulated_devices_stay_on_phb_0_and_leave_phb_1_to_adopt():
    nics = "<interface type='user'><model type='virtio'/></interface>" * 2
    assert pseries_phbs(pseries(phb(0) + phb(1) + nics + isolated(1))) == 2


def test_a_device_placed_on_a_listed_phb_takes_it_from_adoption():
    scsi = ("<controller type='scsi' model='virtio-scsi'><address type='pci' "
            "domain='0x0000' bus='0x01' slot='0x01' function='0x0'/></controller>")
    assert pseries_phbs(pseries(phb(0) + phb(1) + scsi + isolated(1))) == 3


def test_an_interface_hostdev_adopts_too():
    assert pseries_phbs(pseries(phb(0) + phb(1) + vf("0000:3b:02.0"))) == 2


def test_the_baseline_is_no_longer_2_gib_too_high():
    # getPPC64MemLockLimitBytes with 4 GiB: base 4 MiB x nPHB + ..., passthrough
    # max(2 GiB x nPHB, ...): one PHB fewer is 2 GiB + 4 MiB less.
    mem = 4 * 1024 * 1024
    two = mem // 128 + 4096 * 2 + 8192 + max(2 * 1024 * 1024 * 2, mem + mem // 512 * 2 + 8192)
    got = libvirt_limit(pseries(phb(0) + phb(1) + isolated(1)), (9, 0, 0))
    assert got.bytes == two * KiB and "4 MiB x 2 PHB" in got.explanation


# --- libvirt's own cases, with virpcimock's IOMMU groups -----------------------------

def test_libvirt_pseries_hostdevs_1():
    # The two functions of 0001:01:00 share a group, hence a PHB: PHBs 0, 1, 2.
    d = pseries(hostdev("0001:01:00.0") + vf("0005:90:01.0") + hostdev("0001:01:00.1"))
    assert pseries_phbs(d, VIRTPCIMOCK_GROUPS) == 3
    assert pseries_phbs(d) == 4  # groups unknown: each device its own


def test_libvirt_pseries_hostdevs_2():
    # A user address puts a hostdev next to a SCSI controller on bus 1 (that bus drops
    # to group 0); the other hostdev gets a new PHB.
    scsi = ("<controller type='scsi' model='virtio-scsi'><address type='pci' "
            "domain='0x0000' bus='0x01' slot='0x01' function='0x0'/></controller>")
    d = pseries(scsi + hostdev("0001:01:00.0", guest_bus=1, slot=2) + hostdev("0005:90:01.0"))
    assert pseries_phbs(d, VIRTPCIMOCK_GROUPS) == 3


def test_libvirt_pseries_hostdevs_3():
    # A hostdev addressed on bus 2 (libvirt adds PHBs 1 and 2); its sibling function,
    # same group, joins it there rather than adopting the empty PHB 1.
    d = pseries(hostdev("0001:01:00.0", guest_bus=2) + hostdev("0001:01:00.1"))
    assert pseries_phbs(d, VIRTPCIMOCK_GROUPS) == 3


def test_a_device_without_an_iommu_group_here_is_not_isolated():
    # libvirt: the IOMMU group lookup fails, group 0, "device won't be isolated" (what
    # `virsh define` does on a host without the device or without an IOMMU).
    d = pseries(phb(0) + phb(1) + isolated(3))
    assert pseries_phbs(d, {}) == 2
    assert pseries_phbs(pseries(isolated(3)), {}) == 1


def test_devices_in_one_group_share_a_phb():
    groups = {"0000:10:00.0": 3, "0000:11:00.0": 3, "0000:12:00.0": 4}
    assert pseries_phbs(pseries(isolated(3)), groups) == 3
