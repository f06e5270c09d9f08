"""Option-ROM BARs of emulated PCI NICs, and ``<rom file>`` on passthrough devices.

A passed-through device's own ROM BAR is read from the device (emulated I/O, 0 bytes
pinned) unless ``<rom file=...>`` tells QEMU to back it with a file in RAM. Each NIC
model's default ROM is QEMU's ``romfile`` property (hw/net/*.c), which an old machine
type may change (compat.py: pc-i440fx-1.4's iPXE images, no vmxnet3 ROM up to 2.6). A
model not known here counts as the largest NIC ROM, with a note.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..accounting.ledger import Backing, Exposure, Kind
from ..domain import Domain, Interface
from ..host.facts import HostFacts
from ..plugins.spec import hookimpl
from .compat import compat
from .rom_bar import rom_bar

# The QEMU device libvirt 9.0 runs for a <model type=> (qemuBuildNicDevProps,
# virDomainNetGetModelString): the virtio models get their virtio-net-pci variant;
# every other string, known to libvirt's enum or not, is passed through as the driver.
QOM_TYPE = {"virtio": "virtio-net-pci",
            "virtio-transitional": "virtio-net-pci-transitional",
            "virtio-non-transitional": "virtio-net-pci-non-transitional"}
# Each PCI NIC's class romfile in QEMU 7.2 (hw/net/*.c class_init, virtio-net-pci.c):
# the whole e1000 family shares e1000_class_init, the eepro100 family
# eepro100_class_init (e100_devices[]), whose ROM is the iPXE "pxe-" image.
EEPRO100 = ("i82550", "i82551", "i82557a", "i82557b", "i82557c", "i82558a", "i82558b",
            "i82559a", "i82559b", "i82559c", "i82559er", "i82562", "i82801")
NIC_ROMS = {
    "virtio-net-pci": "efi-virtio.rom",
    "virtio-net-pci-transitional": "efi-virtio.rom",
    "virtio-net-pci-non-transitional": "efi-virtio.rom",
    "e1000": "efi-e1000.rom",
    "e1000-82544gc": "efi-e1000.rom",
    "e1000-82545em": "efi-e1000.rom",
    "e1000e": "efi-e1000e.rom",
    "rtl8139": "efi-rtl8139.rom",
    "ne2k_pci": "efi-ne2k_pci.rom",
    "pcnet": "efi-pcnet.rom",
    "vmxnet3": "efi-vmxnet3.rom",
    **dict.fromkeys(EEPRO100, "pxe-eepro100.rom"),
}
# NICs with no option ROM: PCI ones whose class sets no romfile (tulip, rocker, sungem,
# sunhme, pvrdma) and those on other buses (libvirt's usb-net, spapr-vlan, lan9118,
# smc91c111 and its enum's "scm91c111" spelling; QEMU's ne2k_isa).
NO_ROM = frozenset({"tulip", "rocker", "sungem", "sunhme", "pvrdma", "usb-net",
                    "spapr-vlan", "lan9118", "smc91c111", "scm91c111", "ne2k_isa",
                    "netfront"})
# Buses with no PCI ROM BAR.
NON_PCI = ("ccw", "virtio-mmio", "spapr-vio", "isa", "usb", "s390")


@hookimpl
def memlock_guard_exposures(domain: Domain, host: HostFacts) -> Iterable[Exposure]:
    out: list[Exposure] = []
    for i, nic in enumerate(domain.interfaces):
        label = f"interface {nic.alias or nic.mac or f'#{i}'}"
        if nic.rom.suppressed or nic.address_type in NON_PCI or domain.arch == "s390x":
            continue
        if nic.is_vfio:
            if nic.rom.file:
                out += rom_bar(host, nic.rom.file, f"{label} (hostdev)", alias=nic.alias)
            continue
        model = nic.model or _default_model(domain, nic)
        if nic.rom.file:
            out += rom_bar(host, nic.rom.file, f"{label} {model}", alias=nic.alias)
        else:
            out += _default_rom(domain, host, model, f"{label} {model}", nic.alias)
    for j, dev in enumerate(domain.hostdevs):
        if dev.is_vfio and dev.type == "pci" and dev.rom.file and not dev.rom.suppressed:
            out += rom_bar(host, dev.rom.file, f"hostdev {dev.alias or dev.source or j}",
                           alias=dev.alias)
    return out


def _default_model(domain: Domain, nic: Interface) -> str:
    """libvirt's qemuDomainDefaultNetModel: virtio on s390, RISC-V, LoongArch and ARM
    virt; smc91c111 on ARM versatilepb and lan9118 on the other ARM boards (neither
    has an option ROM); else rtl8139."""
    if nic.is_vdpa or nic.type == "vhostuser":
        return "virtio"  # these backends only exist for virtio-net
    if domain.arch in ("armv6l", "armv7l", "armv7b", "aarch64"):
        machine = domain.machine.name or ""
        if machine == "virt" or machine.startswith("virt-"):
            return "virtio"
        return "smc91c111" if machine == "versatilepb" else "lan9118"
    if domain.arch in ("riscv32", "riscv64", "loongarch64", "s390", "s390x"):
        return "virtio"
    return "rtl8139"


def _default_rom(domain: Domain, host: HostFacts, model: str, label: str,
                 alias: str | None) -> list[Exposure]:
    """The ROM BAR QEMU gives this model by default, on this machine type."""
    qom = QOM_TYPE.get(model, model)
    romfile = NIC_ROMS.get(qom)
    if romfile is None:
        if qom in NO_ROM:
            return []
        # A model QEMU 7.2 does not have, or one newer than this table: the largest
        # NIC ROM this host has, so that it cannot be under-counted.
        sizes = {f: host.rom_size(f)[0] or 0 for f in dict.fromkeys(NIC_ROMS.values())}
        largest = max(sizes, key=lambda f: sizes[f])
        return rom_bar(host, largest, label, alias=alias,
                       note=f"NIC model {model!r} is not known to memlock-guard: counted "
                            f"as the largest NIC option ROM, {largest}")
    c = compat(domain.machine, qom, "romfile")
    if c is None:
        return rom_bar(host, romfile, label, alias=alias)
    if not c.value:  # no ROM at all: an empty item, to say so
        return [Exposure(f"{label} option ROM: none", 0, Backing.FILE_ROM, readonly=True,
                         kind=Kind.OPTION_ROM, note=c.note(domain.machine))]
    return rom_bar(host, c.value, label, alias=alias, note=c.note(domain.machine))
