"""pSeries PHBs: what `virsh define` makes of a hand-written domain, against pseries_phbs().

libvirt assigns guest PCI addresses, adds PHBs and isolates devices by IOMMU group when
it defines a domain, so defining one (qemu-system-ppc64 must be installed; nothing is
started) shows how many PHBs it really gets. This host has no IOMMU, so two kinds of
device stand in for isolated ones:
- ``<interface type='network'>`` on a network of forward mode hostdev, to which libvirt
  gives a unique isolation group of its own (qemuDomainFillDeviceIsolationGroup,
  qemuDomainFindUnusedIsolationGroup); it is compared with the same layout written
  with ``<interface type='hostdev'>``, which memlock-guard models (the same placement
  code runs for both, only the group's source differs);
- real ``<hostdev>``s, which libvirt puts in group 0 here because the IOMMU group
  lookup fails, as memlock-guard does with this host's (probed) IOMMU groups.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from lxml import etree
from memlock_guard.baselines.libvirt import pseries_phbs
from memlock_guard.domain import parse_domain
from memlock_guard.host import probe

from .conftest import Libvirtd, unique_name

pytestmark = [pytest.mark.e2e]


def phb(index: int) -> str:
    return (f"<controller type='pci' index='{index}' model='pci-root'>"
            f"<model name='spapr-pci-host-bridge'/><target index='{index}'/></controller>")


def pseries(name: str, devices: str) -> str:
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  <os><type arch='ppc64' machine='pseries'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-ppc64</emulator>
    {devices}
  </devices>
</domain>
"""


def defined_phbs(libvirtd: Libvirtd, name: str) -> tuple[int, bytes]:
    xml = libvirtd.virsh("dumpxml", name).stdout.encode()
    root = etree.fromstring(xml)
    n = sum(1 for c in root.iterfind("devices/controller")
            if c.get("type") == "pci" and c.get("model") == "pci-root")
    return n, xml


@pytest.fixture
def hostdev_network(libvirtd: Libvirtd) -> Iterator[str]:
    """A network of hostdev interfaces, defined and never started (define needs no VF)."""
    name = f"mg-e2e-hdnet-{uuid.uuid4().hex[:8]}"
    path = f"/tmp/{name}.xml"
    with open(path, "w") as f:
        f.write(f"<network><name>{name}</name><forward mode='hostdev' managed='yes'>"
                "<pf dev='eth0'/></forward></network>")
    libvirtd.virsh("net-define", path)
    try:
        yield name
    finally:
        libvirtd.virsh("net-undefine", name, check=False)


LAYOUTS = [((), 1), ((), 2), ((0, 1), 0), ((0, 1), 1), ((0, 1), 2), ((0, 1), 3),
           ((0, 1, 2), 2), ((1,), 1)]


@pytest.mark.parametrize(("listed", "n"), LAYOUTS,
                         ids=[f"phbs{''.join(map(str, p)) or '-none'}-isolated{n}"
                              for p, n in LAYOUTS])
def test_isolated_devices_get_the_phbs_libvirt_gives(libvirtd: Libvirtd, hostdev_network: str,
                                                      listed: tuple[int, ...], n: int) -> None:
    phbs = "".join(phb(i) for i in listed)
    nets = (f"<interface type='network'><source network='{hostdev_network}'/></interface>"
            * n)
    name = libvirtd.define(pseries(unique_name(f"ps-{len(listed)}-{n}"), phbs + nets))
    got, defined = defined_phbs(libvirtd, name)
    vfs = "".join(f"<interface type='hostdev' managed='yes'><source><address type='pci' "
                  f"domain='0x0000' bus='0x3b' slot='0x02' function='{i:#x}'/></source>"
                  "</interface>" for i in range(n))
    assert pseries_phbs(parse_domain(pseries("x", phbs + vfs).encode())) == got
    # Once defined, every device has its address and every PHB is listed.
    assert pseries_phbs(parse_domain(defined)) == got


def test_hostdevs_without_an_iommu_group_here_get_no_phb(libvirtd: Libvirtd) -> None:
    sources = [f"0000:{0x70 + i:02x}:00.0" for i in range(2)]  # not on this host
    devices = phb(0) + phb(1) + "".join(
        f"<hostdev mode='subsystem' type='pci' managed='yes'><driver name='vfio'/><source>"
        f"<address domain='0x0000' bus='{int(s[5:7], 16):#04x}' slot='0x00' "
        "function='0x0'/></source></hostdev>" for s in sources)
    name = libvirtd.define(pseries(unique_name("ps-hostdevs"), devices))
    got, _ = defined_phbs(libvirtd, name)
    domain = parse_domain(pseries("x", devices).encode())
    assert domain.host_pci_devices == tuple(sources)
    host = probe.collect(pci_devices=domain.host_pci_devices)
    assert host.iommu_groups == ()  # looked for, and none of them has a group here
    assert pseries_phbs(domain, host.iommu_group_map) == got == 2
