"""x86 firmware regions: pc.bios, its isa-bios alias, pc.rom, and OVMF's isa-bios copy.

From QEMU's hw/i386/x86-common.c (x86_bios_rom_init), pc.c (pc_memory_init) and
pc_sysfw.c: SeaBIOS or a ``-bios`` ROM is a read-only RAM region at the top of 4 GiB
plus an *alias* of its last 128 KiB below 1 MiB, which VFIO maps (and charges) a second
time. pc.rom is 128 KiB of option-ROM space that QEMU never writes. OVMF loaded as
pflash is a ROM *device*, which VFIO skips, but QEMU before 9.1 (and machine types
<= 9.0 after it) also made a 128 KiB RAM copy of its top as isa-bios.

Measured on QEMU 7.2: SeaBIOS shadows itself into RAM (PAM) within milliseconds, so
its isa-bios alias and pc.rom are mapped only before that ("pre-firmware" window);
under OVMF (pflash, or OVMF.fd as a -bios ROM) the isa-bios copy or alias and pc.rom
stay mapped, and on isapc (no PAM) too. Which SeaBIOS image a machine type loads
without a loader: compat.default_seabios (bios.bin, 128 KiB, on pc-i440fx <= 1.7 and
isapc).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..accounting.ledger import Backing, Exposure, Kind, Window
from ..domain import Domain
from ..host.facts import HostFacts
from ..plugins.spec import hookimpl
from ..support.units import KiB, MiB
from .compat import default_seabios

ISA_BIOS_MAX = 128 * KiB
PC_ROM_SIZE = 128 * KiB  # PC_ROM_SIZE in hw/i386/pc.c
PC_FAMILIES = ("q35", "i440fx", "isapc")
# -bios images that are SeaBIOS (Debian's /usr/share/seabios, QEMU's pc-bios/).
SEABIOS_IMAGES = ("bios.bin", "bios-256k.bin", "bios-microvm.bin")
# Assumed when a -bios image cannot be read here (an OVMF.fd-sized image).
UNKNOWN_BIOS_SIZE = 4 * MiB


@hookimpl
def memlock_guard_exposures(domain: Domain, host: HostFacts) -> Iterable[Exposure]:
    if not domain.is_x86:
        return []  # aarch64/ppc64/s390x firmware is pflash or lives in guest RAM
    family = domain.machine.family
    kind = domain.firmware.kind
    out: list[Exposure] = []
    # SeaBIOS shadows itself; OVMF (pflash or -bios) and unknown images leave both mapped,
    # and so does SeaBIOS on isapc, which has no PAM to shadow with.
    shadowed = (Window.PRE_FIRMWARE if _shadows_itself(domain) and family != "isapc"
                else None)
    if kind == "pflash":
        if _pflash_has_isa_bios_copy(domain, host):
            out.append(Exposure("isa-bios (RAM copy of the pflash top)", ISA_BIOS_MAX,
                                Backing.FILE_ROM, readonly=True, kind=Kind.FIRMWARE,
                                note="QEMU < 9.1 or machine type <= 9.0", mapping="isa-bios"))
    else:
        why = None
        if kind == "rom" and domain.firmware.loader_path:
            name = domain.firmware.loader_path
        else:
            name, why = default_seabios(domain.machine)
        size, origin = host.rom_size(name)
        notes = [why] if why else []
        if size is None:
            size = UNKNOWN_BIOS_SIZE
            notes.append(f"{name} not found on this host: assumed 4 MiB")
        elif origin == "default":
            notes.append(f"{name} not found on this host: size from the built-in table")
        note = "; ".join(notes) or None
        out.append(Exposure(f"pc.bios ({_base(name)})", size, Backing.FILE_ROM, readonly=True,
                            kind=Kind.FIRMWARE, note=note, mapping="pc.bios"))
        out.append(Exposure("isa-bios (alias of the pc.bios top, mapped again)",
                            min(size, ISA_BIOS_MAX), Backing.FILE_ROM, readonly=True,
                            kind=Kind.FIRMWARE, window=shadowed, region="pre-firmware",
                            mapping="isa-bios"))
    if family in PC_FAMILIES or family == "other":
        out.append(Exposure("pc.rom (option ROM space, never written)", PC_ROM_SIZE,
                            Backing.ZERO_FILL, readonly=True, kind=Kind.FIRMWARE,
                            window=shadowed, region="pre-firmware" if shadowed else None,
                            mapping="pc.rom"))
    return out


def _shadows_itself(domain: Domain) -> bool:
    """Whether the firmware unmaps isa-bios and pc.rom before any ROM BAR is mapped.

    SeaBIOS copies itself into RAM and switches PAM to RAM within ~20 ms. OVMF does
    not: measured with OVMF.fd as ``<loader type='rom'>`` (QEMU 7.2, TCG), the
    isa-bios alias and pc.rom were still mapped while the firmware mapped an e1000
    ROM BAR. An image we cannot recognise as SeaBIOS is counted the same way.
    """
    fw = domain.firmware
    if fw.kind == "seabios":
        return True
    if fw.kind == "rom":
        path = (fw.loader_path or "bios-256k.bin").lower()
        return _base(path) in SEABIOS_IMAGES or "seabios" in path
    return False


def _pflash_has_isa_bios_copy(domain: Domain, host: HostFacts) -> bool:
    qemu = host.qemu_version
    if qemu is not None and qemu[:2] < (9, 1):
        return True
    machine = domain.machine.version
    if machine is None:
        # An unversioned alias (q35, pc) means the newest machine of the host's QEMU.
        return qemu is None  # unknown QEMU: count it, never under-estimate
    return machine <= (9, 0)


def _base(path: str) -> str:
    return path.rsplit("/", 1)[-1]
