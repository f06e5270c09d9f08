"""The frozen Domain model: what is read from a domain XML, and how libvirt reads it."""

from __future__ import annotations

import pytest
from memlock_guard.domain import Machine, parse_domain
from memlock_guard.support.errors import InputError

from .builders import NVME, VDPA_NET, VF_NET, GiB, MiB, domain, domain_xml, hostdevs

FULL = b"""<domain type='kvm'>
  <name>full</name>
  <uuid>11111111-2222-3333-4444-555555555555</uuid>
  <maxMemory slots='16' unit='GiB'>64</maxMemory>
  <memory unit='GiB'>12</memory>
  <vcpu placement='static' current='2'>8</vcpu>
  <iothreads>2</iothreads>
  <memtune><hard_limit unit='GiB'>20</hard_limit><soft_limit unit='GiB'>18</soft_limit></memtune>
  <memoryBacking><hugepages/><locked/></memoryBacking>
  <os firmware='efi'><type arch='x86_64' machine='pc-q35-8.2'>hvm</type></os>
  <devices>
    <memory model='dimm'><target><size unit='GiB'>1</size><node>0</node></target></memory>
    <memory model='virtio-mem'><target><size unit='GiB'>2</size><node>0</node>
      <block unit='MiB'>2</block><requested unit='GiB'>1</requested></target></memory>
    <memory model='nvdimm'><source><path>/tmp/nv</path></source>
      <target><size unit='MiB'>512</size><node>0</node></target></memory>
    <hostdev mode='subsystem' type='pci' managed='yes'><source>
      <address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></source>
      <rom bar='off'/></hostdev>
    <hostdev mode='subsystem' type='mdev' model='vfio-pci'><source>
      <address uuid='c2177883-f1bb-47f0-914d-32a22e3a8804'/></source></hostdev>
    <hostdev mode='subsystem' type='usb'><source><vendor id='0x1234'/>
      <product id='0xbeef'/></source></hostdev>
    <interface type='network'><source network='default'/><model type='e1000e'/>
      <rom file='/opt/roms/pxe.rom'/></interface>
    <interface type='hostdev' managed='yes'><source>
      <address type='pci' domain='0x0000' bus='0x3b' slot='0x02' function='0x1'/></source>
      </interface>
    <interface type='vdpa'><source dev='/dev/vhost-vdpa-0'/></interface>
    <disk type='nvme' device='disk'><source type='pci' managed='yes' namespace='1'>
      <address domain='0x0000' bus='0x02' slot='0x00' function='0x0'/></source>
      <target dev='vdb' bus='virtio'/></disk>
    <disk type='file' device='disk'><source file='/a.qcow2'/>
      <backingStore type='nvme'><source type='pci' namespace='1'>
      <address domain='0x0000' bus='0x03' slot='0x00' function='0x0'/></source>
      </backingStore><target dev='vdc' bus='virtio'/></disk>
    <disk type='vhostvdpa' device='disk'><source dev='/dev/vhost-vdpa-1'/>
      <target dev='vdd' bus='virtio'/></disk>
    <disk type='file' device='disk'><source file='/b.qcow2'/><target dev='vde'/></disk>
    <video><model type='virtio' heads='1'/></video>
    <video><model type='qxl' ram='65536' vram='32768' vram64='131072' vgamem='16384'
      heads='2' primary='yes'/></video>
    <graphics type='spice'/>
    <tpm model='tpm-crb'><backend type='emulator'/></tpm>
    <iommu model='smmuv3'/>
  </devices>
  <launchSecurity type='sev'/>
</domain>"""


@pytest.fixture(scope="module")
def full():
    return parse_domain(FULL)


def test_scalars(full):
    assert (full.name, full.type, full.arch) == ("full", "kvm", "x86_64")
    assert full.uuid == "11111111-2222-3333-4444-555555555555"
    assert full.machine.name == "pc-q35-8.2"
    assert full.vcpus == 8  # the maximum, not current=
    assert full.iothreads == 2
    assert full.max_memory == 64 * GiB
    assert full.iommu == "smmuv3"
    assert full.has_tpm
    assert full.launch_security == "sev"
    assert full.graphics == ("spice",)


def test_memory_is_the_total_including_memory_devices(full):
    # <memory> already counts every memory device (virDomainDefPostParseMemory).
    assert full.memory == 12 * GiB
    assert [(m.model, m.size) for m in full.memory_devices] == [
        ("dimm", GiB), ("virtio-mem", 2 * GiB), ("nvdimm", 512 * MiB)]


def test_memtune_and_memory_backing(full):
    assert full.memtune.hard_limit == 20 * GiB
    assert full.memtune.soft_limit == 18 * GiB
    assert full.memory_backing.locked and full.memory_backing.hugepages


def test_vfio_devices_are_pci_and_mdev_hostdevs_and_hostdev_interfaces(full):
    assert len(full.vfio_devices) == 3  # pci + mdev + <interface type='hostdev'>, not usb
    assert [h.is_vfio for h in full.hostdevs] == [True, True, False]
    assert full.hostdevs[0].rom.suppressed and full.hostdevs[0].source == "0000:01:00.0"


def test_nvme_in_the_disk_or_its_backing_chain(full):
    assert len(full.nvme_disks) == 2


def test_vdpa_devices_are_vdpa_interfaces_and_vhostvdpa_disks(full):
    assert len(full.vdpa_devices) == 2


CHAINED = ("<disk type='file' device='disk'><source file='/top.qcow2'/>"
           "<backingStore type='{mid}'><source dev='/x'/>"
           "<backingStore type='{low}'><source dev='/y'/><backingStore/></backingStore>"
           "</backingStore>"
           "<mirror type='file' file='/copy.img' job='copy'><source file='/copy.img'/>"
           "<backingStore type='nvme'><source type='pci'/></backingStore></mirror>"
           "<target dev='vda' bus='virtio'/></disk>")


@pytest.mark.parametrize(("mid", "low", "nvme", "vdpa"), [
    ("file", "nvme", 1, 0),  # NVMe deep in the chain
    ("vhostvdpa", "vhostvdpa", 0, 2),  # libvirt's nvdpa counts every vhostvdpa source
    ("file", "file", 0, 0),  # the <mirror>'s NVMe chain is not the disk's
])
def test_the_backing_chain_is_the_disks_own(mid, low, nvme, vdpa):
    d = domain(CHAINED.format(mid=mid, low=low))
    assert (len(d.nvme_disks), len(d.vdpa_devices)) == (nvme, vdpa)


def test_interface_model_and_rom(full):
    nic = full.interfaces[0]
    assert (nic.type, nic.model, nic.rom.file) == ("network", "e1000e", "/opt/roms/pxe.rom")
    assert not nic.rom.suppressed


def test_primary_video_is_the_one_marked_else_the_first(full):
    assert [(v.model, v.primary) for v in full.videos] == [("virtio", False), ("qxl", True)]
    qxl = full.videos[1]
    assert (qxl.ram, qxl.vram, qxl.vram64, qxl.vgamem, qxl.heads) == (
        64 * MiB, 32 * MiB, 128 * MiB, 16 * MiB, 2)
    first = domain("<video><model type='vga'/></video><video><model type='virtio'/></video>")
    assert [v.primary for v in first.videos] == [True, False]


def test_firmware_kinds():
    assert domain().firmware.kind == "seabios"
    assert domain(os_attrs=" firmware='efi'").firmware.kind == "pflash"
    pflash = "<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>"
    assert domain(os_extra=pflash).firmware.kind == "pflash"
    rom = "<loader type='rom'>/usr/share/OVMF/OVMF.fd</loader>"
    fw = domain(os_extra=rom).firmware
    assert (fw.kind, fw.loader_path) == ("rom", "/usr/share/OVMF/OVMF.fd")


@pytest.mark.parametrize(("name", "version", "family"), [
    ("pc-q35-7.2", (7, 2), "q35"), ("q35", None, "q35"), ("pc", None, "i440fx"),
    ("pc-i440fx-9.0", (9, 0), "i440fx"), ("pc-1.2", (1, 2), "i440fx"),
    ("pseries-8.0", (8, 0), "pseries"), ("pseries", None, "pseries"),
    ("virt-9.1", (9, 1), "virt"), ("microvm", None, "microvm"),
    ("pc-q35-10.1", (10, 1), "q35"), ("s390-ccw-virtio-8.2", (8, 2), "s390-ccw"),
])
def test_machine_versions_and_families(name, version, family):
    m = Machine(name)
    assert (m.version, m.family) == (version, family)


def test_pseries_phb_controllers():
    d = domain("<controller type='pci' index='1' model='pci-root'>"
               "<model name='spapr-pci-host-bridge'/><target index='1'/></controller>"
               "<controller type='pci' index='2' model='pci-bridge'/>",
               arch="ppc64", machine="pseries")
    assert [c.is_pseries_phb for c in d.controllers] == [True, False]


def test_numa_cells_are_the_total_plus_memory_devices():
    cpu = ("<cpu><numa><cell id='0' cpus='0' memory='1' unit='GiB'/>"
           "<cell id='1' cpus='1' memory='524288'/></numa></cpu>")
    dimm = "<memory model='dimm'><target><size unit='GiB'>2</size><node>0</node></target></memory>"
    d = domain(dimm, memory="999", unit="GiB", vcpus=2, extra=cpu)
    assert d.memory == GiB + 512 * MiB + 2 * GiB  # <memory> is ignored with NUMA


def test_memory_devices_cannot_exceed_the_total():
    dimm = "<memory model='dimm'><target><size unit='GiB'>1</size></target></memory>"
    with pytest.raises(InputError, match="memory devices"):
        domain(dimm, memory="1", unit="GiB")


@pytest.mark.parametrize("xml", [
    b"<domain type='kvm'><name>x</name><vcpu>1</vcpu></domain>",  # no memory at all
    domain_xml(memory="0"),
    domain_xml().replace(b"<vcpu>1</vcpu>", b"<vcpu>many</vcpu>"),
])
def test_unusable_domains_are_input_errors(xml):
    with pytest.raises(InputError):
        parse_domain(xml)


def test_the_model_is_frozen():
    d = domain(hostdevs(1))
    with pytest.raises(AttributeError):
        d.memory = 1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        d.hostdevs[0].type = "usb"  # type: ignore[misc]


def test_builders_make_what_they_say():
    d = domain(hostdevs(2) + NVME.format(bus=9, letter="b") + VDPA_NET.format(n=1)
               + VF_NET.format(n=1))
    assert (len(d.vfio_devices), len(d.nvme_disks), len(d.vdpa_devices)) == (3, 1, 1)


# libvirt's post-parse video defaults; each is what libvirt 10.7 writes in the
# *-latest.xml of its own tests (default-video-type-*, graphics-spice-no-args ...).

@pytest.mark.parametrize(("arch", "machine", "model"), [
    ("x86_64", "pc-q35-7.2", "cirrus"), ("x86_64", "pc", "cirrus"),
    ("ppc64", "pseries", "vga"), ("ppc64le", "pseries-8.0", "vga"),
    ("aarch64", "virt", "virtio"), ("aarch64", "virt-9.0", "virtio"),
    ("riscv64", "virt", "virtio"), ("loongarch64", "virt", "virtio"),
    ("s390x", "s390-ccw-virtio", "virtio"),
])
def test_a_video_without_a_model_gets_the_machines_default(arch, machine, model):
    for video in ("<video/>", "<video><model type='default'/></video>",
                  "<video><model heads='1'/></video>"):
        d = domain(video, arch=arch, machine=machine)
        assert [(v.model, v.primary) for v in d.videos] == [(model, True)], video


def test_graphics_without_a_video_get_one_default_video():
    d = domain("<graphics type='spice'/>")
    assert [(v.model, v.primary) for v in d.videos] == [("cirrus", True)]
    assert domain("<graphics type='egl-headless'/>", arch="ppc64",
                  machine="pseries").videos[0].model == "vga"
    assert domain("").videos == ()
    # An explicit video, even 'none', is kept as it is.
    d = domain("<graphics type='vnc'/><video><model type='none'/></video>")
    assert [v.model for v in d.videos] == ["none"]

