"""Option-ROM BARs of emulated PCI NICs, and ``<rom file>`` on passthrough devices.

A passed-through device's own ROM BAR is read from the device (emulated I/O, 0 bytes
pinned) unless ``<rom file=...>`` tells QEMU to back it with a file in RAM. Each NIC
model's default ROM is QEMU's ``romfile`` property (hw/net/*.c).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..accounting.ledger import Exposure
from ..domain import Domain, Interface
from ..host.facts import HostFacts
from ..plugins.spec import hookimpl
from .rom_bar import rom_bar

NIC_ROMS = {
    "virtio": "efi-virtio.rom",
    "virtio-transitional": "efi-virtio.rom",
    "virtio-non-transitional": "efi-virtio.rom",
    "e1000": "efi-e1000.rom",
    "e1000e": "efi-e1000e.rom",
    "rtl8139": "efi-rtl8139.rom",
    "ne2k_pci": "efi-ne2k_pci.rom",
    "pcnet": "efi-pcnet.rom",
    "vmxnet3": "efi-vmxnet3.rom",
    "i82551": "efi-eepro100.rom",
    "i82557b": "efi-eepro100.rom",
    "i82559er": "efi-eepro100.rom",
}
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
        romfile = nic.rom.file or _default_rom(domain, nic)
        if romfile:
            out += rom_bar(host, romfile, f"{label} {nic.model or _default_model(domain, nic)}",
                           alias=nic.alias)
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


def _default_rom(domain: Domain, nic: Interface) -> str | None:
    model = nic.model or _default_model(domain, nic)
    return NIC_ROMS.get(model)
