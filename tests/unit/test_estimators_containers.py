"""How many VFIO containers pin the guest address space, and that every item multiplies."""

from __future__ import annotations

import pytest
from memlock_guard.accounting.ledger import Kind
from memlock_guard.accounting.modes import Mode

from .builders import VF_NET, GiB, hostdevs, ledger, nvme_disks, vdpa_nets

IOMMU = "<iommu model='intel'/>"
MDEV = ("<hostdev mode='subsystem' type='mdev' model='vfio-pci'><source>"
        "<address uuid='c2177883-f1bb-47f0-914d-32a22e3a8804'/></source></hostdev>")
USB = ("<hostdev mode='subsystem' type='usb'><source><vendor id='0x1'/><product id='0x2'/>"
       "</source></hostdev>")
VHOSTVDPA = ("<disk type='vhostvdpa' device='disk'><source dev='/dev/vhost-vdpa-9'/>"
             "<target dev='vdz' bus='virtio'/></disk>")


@pytest.mark.parametrize(("devices", "n"), [
    ("", 0),
    (USB, 0),                                   # not VFIO
    (hostdevs(1), 1),
    (hostdevs(4), 1),                           # no vIOMMU: one shared container
    (MDEV + hostdevs(1), 1),
    (hostdevs(3) + IOMMU, 3),                   # vIOMMU: one each
    ("".join(VF_NET.format(n=i) for i in range(3)) + IOMMU, 3),
    (hostdevs(2) + nvme_disks(1), 2),           # + one per NVMe disk
    (nvme_disks(2), 2),
    (hostdevs(2) + vdpa_nets(2), 3),            # + one per vDPA device
    (VHOSTVDPA, 1),
    (hostdevs(2) + IOMMU + nvme_disks(1) + vdpa_nets(1), 4),
])
def test_container_count(pinned_host, devices, n):
    led = ledger(pinned_host, devices)
    assert led.containers == n == len(led.container_reasons)


def test_every_item_is_multiplied_by_the_containers(pinned_host):
    led = ledger(pinned_host, hostdevs(3) + IOMMU + "<video><model type='qxl'/></video>"
                 "<interface type='network'><model type='virtio'/></interface>")
    assert {i.kind for i in led.items} >= {Kind.RAM, Kind.FIRMWARE, Kind.VIDEO, Kind.OPTION_ROM}
    for i in led.items:
        assert i.containers == 3
        assert i.charged == 3 * i.bytes


def test_nothing_pins_without_vfio_nvme_or_vdpa(pinned_host):
    led = ledger(pinned_host, "<video><model type='qxl'/></video>")
    assert led.containers == 0
    assert led.required(Mode.STRICT) == led.required(Mode.TOLERANT) == 0
    assert led.items  # still itemised, just not charged


def test_required_scales_with_the_containers(pinned_host):
    one = ledger(pinned_host, hostdevs(2), memory="2", unit="GiB").required(Mode.STRICT)
    two = ledger(pinned_host, hostdevs(2) + IOMMU, memory="2", unit="GiB").required(Mode.STRICT)
    assert two == 2 * one
    assert one > 2 * GiB
