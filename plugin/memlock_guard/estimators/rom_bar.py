"""How a PCI option-ROM BAR is sized and split into file bytes and a zero-fill tail.

QEMU's pci_add_option_rom() (hw/pci/pci.c, QEMU 7.2) rounds the file size up to a
power of two for the BAR, allocates a fresh RAM block of that size
(memory_region_init_rom) and copies the file into its start (load_image_size, a plain
read() of the file size; no memset of the rest). Pages past the file's last page are
never written, so a read-only pin got the shared zero page before Linux 6.2.

Unless transparent huge pages fill them. QEMU madvises every RAM block MADV_HUGEPAGE
and aligns it to 2 MiB (ram_block_add in softmmu/physmem.c, QEMU_VMALLOC_ALIGN in
include/qemu/osdep.h), so with THP "always" or "madvise" the first write into each
2 MiB extent of a BAR of 2 MiB or more faults in a whole zeroed huge page. Measured on
QEMU 7.2 (docs/sources.md §8): a 1100 KiB file in a 2 MiB BAR and a 2600 KiB file in a
4 MiB BAR left no page unpopulated. An extent the file does not reach stays empty.
"""

from __future__ import annotations

from ..accounting.ledger import ROM_BAR, Backing, Exposure, Kind, Window, device_mapping
from ..host.facts import HostFacts
from ..support.units import MiB, pow2ceil, round_up

PAGE = 4096
# A PMD-sized transparent huge page on x86-64 (and QEMU's RAM-block alignment there).
THP_EXTENT = 2 * MiB
# When a <rom file> cannot be read here we assume this much; big GPU vBIOS images
# are up to 1 MiB. The item carries a note saying so.
UNKNOWN_ROM_SIZE = 1 * MiB


def rom_bar(host: HostFacts, file: str, label: str, *, kind: Kind = Kind.OPTION_ROM,
            alias: str | None = None, note: str | None = None) -> list[Exposure]:
    """The ROM BAR's items, in the boot-rom window: firmware maps one ROM at a time.

    ``alias`` is the device's QEMU id (libvirt's alias), for the items' mapping key.
    ``note`` says why this file (a compat property, an assumed model); what is learnt
    about the file itself is added to it.
    """
    size, origin = host.rom_size(file)
    notes = [note] if note else []
    if file in host.missing_files:
        notes.append(f"{file} does not exist on this host: QEMU will refuse to start "
                     "(failed to find romfile)")
        if size is None:
            notes.append(f"assumed {UNKNOWN_ROM_SIZE // MiB} MiB")
        elif origin == "default":
            notes.append("sized by its file name, from the built-in table")
        else:
            notes.append("sized by its file name, as QEMU's directories hold it")
    elif size is None:
        notes.append(f"{file} not found on this host: assumed {UNKNOWN_ROM_SIZE // MiB} MiB")
    elif origin == "default":
        notes.append(f"{file} not found on this host: size from the built-in table")
    size = UNKNOWN_ROM_SIZE if size is None else size
    if size == 0:
        return []
    bar = pow2ceil(size)
    written = min(round_up(size, PAGE), bar)
    if bar >= THP_EXTENT and host.thp_fills_extents \
            and min(round_up(size, THP_EXTENT), bar) > written:
        written = min(round_up(size, THP_EXTENT), bar)
        notes.append("transparent huge pages fill whole 2 MiB extents of the BAR "
                     f"(THP {host.transparent_hugepage or 'unknown, assumed on'})")
    name = file if "/" not in file else file.rsplit("/", 1)[1]
    region = f"{label} ROM BAR {name}"
    mapping = device_mapping(alias, ROM_BAR)
    out = [Exposure(region, written, Backing.FILE_ROM, readonly=True, kind=kind,
                    window=Window.BOOT_ROM, region=region, note="; ".join(notes) or None,
                    mapping=mapping)]
    if bar > written:
        out.append(Exposure(f"{region} (never-written tail)", bar - written,
                            Backing.ZERO_FILL, readonly=True, kind=kind,
                            window=Window.BOOT_ROM, region=region, mapping=mapping))
    return out
