"""hypothesis strategies: libvirt domain XMLs with random device sets.

A ``Spec`` is the domain in a few fields plus a list of device XML snippets, so a test
can add one device and compare. Every generated value is one libvirt accepts (units in
any case, sizes within libvirt's ranges); ``junk`` strategies give values it refuses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# Moderate on purpose: the whole suite has to stay well under 15 minutes.
# MEMLOCK_GUARD_HYPOTHESIS_EXAMPLES raises it for a deeper run.
SETTINGS = settings(
    max_examples=int(os.environ.get("MEMLOCK_GUARD_HYPOTHESIS_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

KiB, MiB, GiB = 1024, 1024**2, 1024**3
BINARY = {"k": 1, "m": 2, "g": 3, "t": 4}


@dataclass(frozen=True)
class Spec:
    memory: str  # the <memory> element
    arch: str = "x86_64"
    machine: str = "pc-q35-7.2"
    dtype: str = "kvm"
    vcpus: int = 2
    os_extra: str = ""  # loader, firmware attribute (on <os>), kernel
    os_attrs: str = ""
    extra: str = ""  # memtune, memoryBacking, maxMemory
    devices: tuple[str, ...] = field(default=())
    iommu: str | None = None

    def xml(self) -> bytes:
        iommu = f"<iommu model='{self.iommu}'/>" if self.iommu else ""
        return (f"<domain type='{self.dtype}'><name>prop</name>{self.memory}{self.extra}"
                f"<vcpu>{self.vcpus}</vcpu><os{self.os_attrs}><type arch='{self.arch}' "
                f"machine='{self.machine}'>hvm</type>{self.os_extra}</os>"
                f"<devices>{''.join(self.devices)}{iommu}</devices></domain>").encode()

    def plus(self, device: str) -> Spec:
        return replace(self, devices=(*self.devices, device))


def _unit_case(u: str) -> st.SearchStrategy[str]:
    return st.sampled_from(sorted({u, u.lower(), u.upper(), u.capitalize()}))


@st.composite
def sizes(draw: st.DrawFn, lo: int = 64 * MiB, hi: int = 64 * GiB) -> tuple[str, str, int]:
    """(value text, unit, bytes) for a libvirt scaled integer, in a random unit."""
    n = draw(st.integers(lo, hi))
    unit = draw(st.sampled_from(["", "b", "bytes", "k", "KiB", "KB", "M", "MiB", "MB",
                                 "G", "GiB", "GB"]))
    if unit == "":
        value = -(-n // KiB)
        return str(value), "", value * KiB
    u = draw(_unit_case(unit))
    low = unit.lower()
    if low in ("b", "bytes"):
        scale = 1
    elif low.endswith("ib") or len(low) == 1:
        scale = 1024 ** BINARY[low[0]]
    else:
        scale = 1000 ** BINARY[low[0]]
    value = max(1, n // scale)
    return str(value), u, -(-(value * scale) // KiB) * KiB


def _pci(draw: st.DrawFn) -> str:
    bus, slot, fn = (draw(st.integers(1, 255)), draw(st.integers(0, 31)),
                     draw(st.integers(0, 7)))
    return f"<address domain='0x0000' bus='0x{bus:02x}' slot='0x{slot:02x}' function='0x{fn}'/>"


ROM = st.sampled_from(["", "<rom bar='off'/>", "<rom bar='on'/>", "<rom enabled='no'/>",
                       "<rom file='/usr/share/qemu/efi-e1000.rom'/>",
                       "<rom bar='on' file='/nonexistent/vbios.rom'/>"])


@st.composite
def vfio_hostdev(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["pci", "pci", "mdev", "interface"]))
    rom = draw(ROM)
    if kind == "pci":
        return (f"<hostdev mode='subsystem' type='pci' managed='yes'><source>{_pci(draw)}"
                f"</source>{rom}</hostdev>")
    if kind == "mdev":
        return ("<hostdev mode='subsystem' type='mdev' model='vfio-pci'><source><address "
                "uuid='c2177883-f1bb-47f0-914d-32a22e3a8804'/></source></hostdev>")
    return (f"<interface type='hostdev' managed='yes'><source>{_pci(draw)}</source>{rom}"
            "</interface>")


@st.composite
def nic(draw: st.DrawFn) -> str:
    model = draw(st.sampled_from([None, "virtio", "e1000", "e1000e", "rtl8139", "vmxnet3",
                                  "ne2k_pci", "pcnet", "i82559er", "VIRTIO", "unknown-nic"]))
    kind = draw(st.sampled_from(["network", "bridge", "user", "vhostuser"]))
    m = f"<model type='{model}'/>" if model else ""
    addr = draw(st.sampled_from(["", "<address type='ccw' cssid='0xfe' ssid='0x0' "
                                     "devno='0x0001'/>", "<address type='pci'/>"]))
    return f"<interface type='{kind}'><source network='default'/>{m}{draw(ROM)}{addr}</interface>"


@st.composite
def vdpa(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return "<interface type='vdpa'><source dev='/dev/vhost-vdpa-0'/></interface>"
    return ("<disk type='vhostvdpa' device='disk'><source dev='/dev/vhost-vdpa-1'/>"
            "<target dev='vdb' bus='virtio'/></disk>")


@st.composite
def nvme(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return ("<disk type='nvme' device='disk'><source type='pci' managed='yes' "
                f"namespace='1'>{_pci(draw)}</source><target dev='vdc' bus='virtio'/></disk>")
    return ("<disk type='file' device='disk'><source file='/x.qcow2'/><backingStore "
            "type='nvme'><source type='pci' namespace='1'/></backingStore>"
            "<target dev='vdd' bus='virtio'/></disk>")


def plain_disk() -> st.SearchStrategy[str]:
    return st.just("<disk type='file' device='disk'><source file='/y.img'/>"
                   "<target dev='vde'/></disk>")


KIB_ATTR = st.integers(0, 2**32 - 1)


@st.composite
def video(draw: st.DrawFn, primary: bool | None = None) -> str:
    model = draw(st.sampled_from(["vga", "cirrus", "qxl", "bochs", "virtio", "vmvga",
                                  "ramfb", "none"]))
    attrs = []
    for name in ("vram", "ram", "vgamem", "vram64"):
        if draw(st.booleans()):
            small = draw(st.sampled_from([1024, 8192, 16384, 65536, 262144]))
            attrs.append(f"{name}='{draw(st.one_of(st.just(small), KIB_ATTR))}'")
    if draw(st.booleans()):
        attrs.append(f"heads='{draw(st.integers(1, 4))}'")
    if primary:
        attrs.append("primary='yes'")
    return f"<video><model type='{model}' {' '.join(attrs)}/></video>"


@st.composite
def memory_device(draw: st.DrawFn) -> tuple[str, int]:
    model = draw(st.sampled_from(["dimm", "nvdimm", "virtio-mem", "virtio-pmem"]))
    text, unit, size = draw(sizes(lo=128 * MiB, hi=4 * GiB))
    u = f" unit='{unit}'" if unit else ""
    return (f"<memory model='{model}'><target><size{u}>{text}</size><node>0</node></target>"
            "</memory>", size)


OTHER = st.sampled_from([
    "<controller type='usb' model='qemu-xhci'/>", "<serial type='pty'/>",
    "<graphics type='vnc'/>", "<tpm model='tpm-crb'><backend type='emulator'/></tpm>",
    "<hostdev mode='subsystem' type='usb'><source><vendor id='0x1'/><product id='0x2'/>"
    "</source></hostdev>",
    "<controller type='pci' model='pci-root'><model name='spapr-pci-host-bridge'/></controller>",
])

DEVICE = st.one_of(vfio_hostdev(), nic(), vdpa(), nvme(), plain_disk(), video(),
                   OTHER)

MACHINES = {
    "x86_64": ["pc-q35-7.2", "q35", "pc", "pc-i440fx-8.0", "pc-q35-9.1", "microvm",
               "pc-q35-4.2"],
    "i686": ["pc", "pc-i440fx-7.2"],
    "aarch64": ["virt", "virt-8.2"],
    "ppc64le": ["pseries", "pseries-8.0"],
    "s390x": ["s390-ccw-virtio"],
}

FIRMWARE = st.sampled_from([
    ("", ""), (" firmware='efi'", ""), ("", "<loader readonly='yes' type='pflash'>"
                                            "/usr/share/OVMF/OVMF_CODE.fd</loader>"),
    ("", "<loader type='rom'>/usr/share/seabios/bios.bin</loader>"),
    ("", "<loader>/nonexistent/custom.bin</loader>"),
    ("", "<kernel>/boot/vmlinuz</kernel>"),
])


@st.composite
def domains(draw: st.DrawFn, max_devices: int = 8) -> Spec:
    arch = draw(st.sampled_from(list(MACHINES)))
    text, unit, _ = draw(sizes())
    u = f" unit='{unit}'" if unit else ""
    memory = f"<memory{u}>{text}</memory>"
    devices = list(draw(st.lists(DEVICE, max_size=max_devices)))
    mem_devs = draw(st.lists(memory_device(), max_size=2))
    if mem_devs:
        # <memory> is the total, memory devices included.
        _, _, base = draw(sizes(lo=256 * MiB, hi=8 * GiB))
        total_kib = (base + sum(size for _, size in mem_devs)) // KiB
        memory = f"<memory>{total_kib}</memory>"
        devices += [xml for xml, _ in mem_devs]
    if draw(st.booleans()):
        devices.insert(0, draw(video(primary=True)))
    extra = draw(st.sampled_from(["", "<memoryBacking><locked/></memoryBacking>",
                                  "<memtune><hard_limit unit='GiB'>16</hard_limit></memtune>",
                                  "<maxMemory slots='16' unit='GiB'>128</maxMemory>",
                                  "<memoryBacking><hugepages/></memoryBacking>"]))
    os_attrs, os_extra = draw(FIRMWARE)
    return Spec(memory=memory, arch=arch, machine=draw(st.sampled_from(MACHINES[arch])),
                dtype=draw(st.sampled_from(["kvm", "kvm", "qemu"])),
                vcpus=draw(st.integers(1, 300)), os_attrs=os_attrs, os_extra=os_extra,
                extra=extra, devices=tuple(devices),
                iommu=draw(st.sampled_from([None, None, "intel", "smmuv3", "virtio"])))


JUNK = st.one_of(st.text(max_size=30), st.sampled_from([
    "-1", "-0", "+", "", " ", "1 ", "0x10", "1e9", "18446744073709551616", "9" * 30,
    "\u0661", "NaN", "1.5", "\x00", "4294967296"]))
JUNK_UNIT = st.one_of(st.text(max_size=6), st.sampled_from(
    ["kib ", " k", "\u212a", "ib", "KiBB", "bit", "kb2", "Ki"]))


@st.composite
def junk_domains(draw: st.DrawFn) -> bytes:
    """A valid domain with one value replaced by junk: only InputError may come out."""
    spec = draw(domains(max_devices=4))
    where = draw(st.sampled_from(["memory", "unit", "vcpu", "vram", "heads", "hard_limit",
                                  "cell", "dimm", "iothreads", "maxMemory"]))
    j = draw(JUNK)
    esc = (j.replace("&", "&amp;").replace("<", "&lt;").replace("'", "&apos;")
           .replace("\x00", "&#1;"))
    esc = "".join(c for c in esc if c.isprintable() or c in "\t\n\r")
    if where == "memory":
        spec = replace(spec, memory=f"<memory>{esc}</memory>")
    elif where == "unit":
        u = draw(JUNK_UNIT).replace("&", "&amp;").replace("<", "&lt;").replace("'", "&apos;")
        u = "".join(c for c in u if c.isprintable())
        spec = replace(spec, memory=f"<memory unit='{u}'>4</memory>")
    elif where == "vcpu":
        return spec.xml().replace(f"<vcpu>{spec.vcpus}</vcpu>".encode(),
                                  f"<vcpu>{esc}</vcpu>".encode())
    elif where in ("vram", "heads"):
        spec = spec.plus(f"<video><model type='qxl' {where}='{esc}'/></video>")
    elif where == "hard_limit":
        spec = replace(spec, extra=f"<memtune><hard_limit>{esc}</hard_limit></memtune>")
    elif where == "cell":
        spec = replace(spec, os_extra=spec.os_extra, extra=spec.extra
                       + f"<cpu><numa><cell id='0' cpus='0' memory='{esc}'/></numa></cpu>")
    elif where == "dimm":
        spec = spec.plus(f"<memory model='dimm'><target><size>{esc}</size></target></memory>")
    elif where == "iothreads":
        spec = replace(spec, extra=spec.extra + f"<iothreads>{esc}</iothreads>")
    else:
        spec = replace(spec, extra=spec.extra + f"<maxMemory slots='1'>{esc}</maxMemory>")
    return spec.xml()
