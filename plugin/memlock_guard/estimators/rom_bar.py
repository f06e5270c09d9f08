"""How a PCI option-ROM BAR is sized and split into file bytes and a zero-fill tail.

QEMU's pci_add_option_rom() rounds the file size up to a power of two for the BAR and
copies the file into the start of a fresh RAM block. Pages past the file's last page
are never written, so a read-only pin got the shared zero page before Linux 6.2.
"""

from __future__ import annotations

from ..accounting.ledger import Backing, Exposure, Kind, Window
from ..host.facts import HostFacts
from ..support.units import MiB, pow2ceil, round_up

PAGE = 4096
# When a <rom file> cannot be read here we assume this much; big GPU vBIOS images
# are up to 1 MiB. The item carries a note saying so.
UNKNOWN_ROM_SIZE = 1 * MiB


def rom_bar(host: HostFacts, file: str, label: str, *,
            kind: Kind = Kind.OPTION_ROM) -> list[Exposure]:
    """The ROM BAR's items, in the boot-rom window: firmware maps one ROM at a time."""
    size, origin = host.rom_size(file)
    note = None
    if size is None:
        size = UNKNOWN_ROM_SIZE
        note = f"{file} not found on this host: assumed {UNKNOWN_ROM_SIZE // MiB} MiB"
    elif origin == "default":
        note = f"{file} not found on this host: size from the built-in table"
    if size == 0:
        return []
    bar = pow2ceil(size)
    written = min(round_up(size, PAGE), bar)
    name = file if "/" not in file else file.rsplit("/", 1)[1]
    region = f"{label} ROM BAR {name}"
    out = [Exposure(region, written, Backing.FILE_ROM, readonly=True, kind=kind,
                    window=Window.BOOT_ROM, region=region, note=note)]
    if bar > written:
        out.append(Exposure(f"{region} (never-written tail)", bar - written,
                            Backing.ZERO_FILL, readonly=True, kind=kind,
                            window=Window.BOOT_ROM, region=region))
    return out
