"""What an older machine type changes in QEMU's defaults that VFIO would map (QEMU 7.2).

A versioned machine type X.Y keeps the device defaults of QEMU X.Y: its machine
options (hw/i386/pc_piix.c ``pc_i440fx_X_Y_machine_options``, hw/i386/pc_q35.c, and the
other boards') call X.Y+1's and then add the arrays ``hw_compat_X_Y``
(hw/core/machine.c, every architecture) and ``pc_compat_X_Y`` (hw/i386/pc.c, the x86
PC machines), so X.Y gets every array of a version >= X.Y. An unversioned alias (pc,
q35, virt, pseries) is the newest machine type, which gets none.

A global property applies to a device whose QOM type is the named type or a subclass
of it (qom/object.c object_apply_global_props, object_dynamic_cast). None of the types
below has a subclass libvirt can create: e1000-82545em (parent e1000-base) and
virtio-net-pci-transitional (parent virtio-net-pci-base) keep their class defaults, as
measured. A property set on the device itself (``<rom file>``) wins over a global.

Every compat entry of QEMU 7.2 was audited against the sizes the estimators use
(docs/sources.md §10, with the machine types and the measurements); these are the ones
that change one. Which SeaBIOS image a machine type loads is a machine option, not a
compat property, and is here too.
"""

from __future__ import annotations

from typing import NamedTuple

from ..domain import Machine

PC_FAMILIES = ("i440fx", "q35")  # the machines pc_compat_* arrays are added to


class Compat(NamedTuple):
    array: str  # the GlobalProperty array that holds it
    driver: str  # QOM type
    prop: str
    value: str
    upto: tuple[int, int]  # applies to machine types of this version and older
    pc_only: bool = False  # a pc_compat_* array: x86 PC machines only

    def note(self, machine: Machine) -> str:
        return f"{self.array}: {self.driver} {self.prop}={self.value!r} " \
               f"(machine type {machine.name})"


COMPAT = (
    # hw/core/machine.c. cirrus_vga.c's class default is vgamem_mb=4.
    Compat("hw_compat_2_8", "cirrus-vga", "vgamem_mb", "8", (2, 8)),
    # hw/i386/pc.c: the iPXE "pxe-" images (a 128 KiB BAR) before the EFI ones (256 KiB).
    Compat("pc_compat_1_4", "e1000", "romfile", "pxe-e1000.rom", (1, 4), pc_only=True),
    Compat("pc_compat_1_4", "ne2k_pci", "romfile", "pxe-ne2k_pci.rom", (1, 4), pc_only=True),
    Compat("pc_compat_1_4", "pcnet", "romfile", "pxe-pcnet.rom", (1, 4), pc_only=True),
    Compat("pc_compat_1_4", "rtl8139", "romfile", "pxe-rtl8139.rom", (1, 4), pc_only=True),
    Compat("pc_compat_1_4", "virtio-net-pci", "romfile", "pxe-virtio.rom", (1, 4),
           pc_only=True),
    # An empty romfile: pci_add_option_rom() returns at once, no ROM BAR.
    Compat("pc_compat_2_6", "vmxnet3", "romfile", "", (2, 6), pc_only=True),
)


def compat(machine: Machine, driver: str, prop: str) -> Compat | None:
    """The compat entry that sets ``driver``'s ``prop`` on this machine type, if any."""
    version = machine.version
    if version is None:
        return None
    for c in COMPAT:
        if (c.driver == driver and c.prop == prop and version <= c.upto
                and (not c.pc_only or machine.family in PC_FAMILIES)):
            return c
    return None


def default_seabios(machine: Machine) -> tuple[str, str | None]:
    """The ``-bios`` image a PC machine type loads when libvirt names none, and why.

    pc_i440fx_machine_options and pc_q35_machine_options set
    ``default_machine_opts = "firmware=bios-256k.bin"``; pc_i440fx_1_7_machine_options
    (so 1.4 to 1.7) sets it to NULL, and isapc never sets it, so pc_system_firmware_init
    falls back to x86_bios_rom_init(..., "bios.bin") (hw/i386/pc_sysfw.c). microvm
    loads bios-microvm.bin (hw/i386/microvm.c).
    """
    family, version = machine.family, machine.version
    if family == "microvm":
        return "bios-microvm.bin", None
    if family == "isapc":
        return "bios.bin", "isapc: no firmware= machine option, so bios.bin"
    if family == "i440fx" and version is not None and version <= (1, 7):
        return "bios.bin", (f"pc-i440fx <= 1.7 (pc_i440fx_1_7_machine_options: "
                            f"default_machine_opts = NULL), so bios.bin "
                            f"(machine type {machine.name})")
    return "bios-256k.bin", None
