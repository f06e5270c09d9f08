"""Video devices: their RAM BARs (mapped read-write) and VGA BIOS ROM BARs.

How libvirt's ``<video>`` becomes a QEMU device (qemu_command.c) and how big QEMU makes
each BAR (hw/display/*.c):
- vga     -> VGA, vgamem_mb = vram/1024; vga_common_init clamps to 1..512 MiB, pow2ceil.
- cirrus  -> cirrus-vga: 4 MiB (libvirt passes no size; QEMU's default), 8 MiB on
            machine types <= 2.8 (hw_compat_2_8, compat.py). On ARM the vram is
            mapped only once the guest OS drives cirrus: AAVMF has no cirrus driver
            (measured: 64 KiB, the ROM). Counted all the same, as the guest decides.
- bochs   -> bochs-display, vgamem = vram; pow2ceil.
- vmvga   -> vmware-svga: VGA-style vram plus a 64 KiB FIFO.
- qxl     -> qxl-vga when primary, qxl when not. BAR0 "ram" = max(ram, 2 x vgamem)
            (vgamem clamped 8..256 MiB); BAR1 "vram32" = vram, an alias into the vram
            block; BAR4 = the whole 64-bit vram, only when vram64 > vram32 (so the
            first vram32 bytes are mapped twice); BAR2 = the 8 KiB device ROM. Each
            size is a power of two (qxl_init_ramsize).
- virtio  -> virtio-vga (8 MiB VGA RAM) when primary; virtio-gpu-pci (no RAM BAR) when
            not, or when the emulator has no virtio-vga (qemuDomainSupportsVideoVga):
            Debian's aarch64 and ppc64 builds lack it (host facts, ``-device help``;
            not probed: assumed present, which can only over-count).
- ramfb, none and the rest map nothing of their own.
Only the primary VGA-compatible device carries a VGA BIOS (vgabios-*.bin) ROM BAR.

On x86 a VGA-compatible primary (VGA, qxl-vga, virtio-vga, vmware-svga, cirrus) also
maps its RAM a second time at 0xa0000 while the guest uses a chain-4 graphics mode
(QEMU's "vga.chain4" alias, up to 128 KiB; cirrus's two 32 KiB bank aliases). OVMF's
GOP mode does that (measured: 64 KiB). It counts as always mapped: the guest decides.
Other machines have no such window: ARM ``virt`` maps PCI memory space to the CPU
only through its "pcie-mmio" alias from 0x10000000 (hw/arm/virt.c create_pcie),
pSeries from 0x80000000 (spapr_pci.c), so PCI address 0xa0000 is never seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..accounting.ledger import VGA_WINDOW, Backing, Exposure, Kind, device_mapping
from ..domain import Domain, Video
from ..host.facts import HostFacts, qemu_target
from ..plugins.spec import hookimpl
from ..support.units import KiB, MiB, pow2ceil
from .compat import compat
from .rom_bar import rom_bar

# libvirt's defaults when the XML leaves a size out (virDomainVideoDefaultRAM and
# qemuDomainDeviceVideoDefPostParse); values in bytes.
DEFAULT_VRAM = {"vga": 16 * MiB, "cirrus": 16 * MiB, "vmvga": 16 * MiB, "bochs": 16 * MiB,
                "qxl": 64 * MiB}
QXL_DEFAULT_RAM = 64 * MiB
QXL_DEFAULT_VGAMEM = 16 * MiB
QXL_ROM = 8 * KiB  # qxl_rom_size(): two pages
CIRRUS_VRAM = 4 * MiB  # cirrus_vga.c pci_vga_cirrus_properties: vgamem_mb 4
ARM = ("armv6l", "armv7l", "armv7b", "aarch64")
VIRTIO_VGA_VRAM = 8 * MiB
VMSVGA_FIFO = 64 * KiB  # SVGA_FIFO_SIZE
VGA_BIOS = {"vga": "vgabios-stdvga.bin", "cirrus": "vgabios-cirrus.bin",
            "qxl": "vgabios-qxl.bin", "virtio": "vgabios-virtio.bin",
            "vmvga": "vgabios-vmware.bin", "bochs": "vgabios-bochs-display.bin"}
NON_PCI = ("ccw", "virtio-mmio", "isa")
# Largest legacy-window alias of video RAM (vga_update_memory_access: 0xa0000-0xbffff).
LOW_ALIAS = {"vga": 128 * KiB, "qxl": 128 * KiB, "virtio": 128 * KiB, "vmvga": 128 * KiB,
             "cirrus": 64 * KiB}


@hookimpl
def memlock_guard_exposures(domain: Domain, host: HostFacts) -> Iterable[Exposure]:
    out: list[Exposure] = []
    for i, video in enumerate(domain.videos):
        if video.address_type in NON_PCI or domain.arch == "s390x":
            continue
        label = f"video {video.alias or f'#{i}'}"
        if (video.model == "virtio" and video.primary
                and host.has_device(domain.arch, "virtio-vga") is False):
            out.append(Exposure(f"{label} virtio-gpu-pci: no RAM BAR, no ROM", 0,
                                Backing.DEVICE_RAM, readonly=False, kind=Kind.VIDEO,
                                note=f"qemu-system-{qemu_target(domain.arch)} has no "
                                     "virtio-vga (-device help)"))
            continue
        out += _ram_bars(video, label, domain)
        alias = LOW_ALIAS.get(video.model or "") if video.primary and domain.is_x86 else None
        if alias:
            out.append(Exposure(f"{label} legacy VGA window alias (graphics modes)", alias,
                                Backing.DEVICE_RAM, readonly=False, kind=Kind.VIDEO,
                                mapping=device_mapping(video.alias, VGA_WINDOW)))
        # A secondary qxl/virtio is the non-VGA variant, which has no VGA BIOS.
        bios = VGA_BIOS.get(video.model or "") if video.primary else None
        if bios:
            out += rom_bar(host, bios, label, kind=Kind.VIDEO, alias=video.alias)
    return out


def _ram_bars(v: Video, label: str, domain: Domain) -> list[Exposure]:
    model = v.model or ""

    def bar(name: str, size: int, index: int, readonly: bool = False,
            note: str | None = None) -> Exposure:
        return Exposure(f"{label} {name}", size, Backing.DEVICE_RAM, readonly=readonly,
                        kind=Kind.VIDEO, mapping=device_mapping(v.alias, index), note=note)

    # BAR indices: pci_register_bar() in hw/display/vga-pci.c, cirrus_vga.c,
    # bochs-display.c, vmware_vga.c, virtio-vga.c (QEMU 7.2).
    if model == "vga":
        return [bar("VGA vram", _vga_vram(v.vram or DEFAULT_VRAM["vga"]), 0)]
    if model == "cirrus":
        c = compat(domain.machine, "cirrus-vga", "vgamem_mb")
        notes = [c.note(domain.machine)] if c else []
        if domain.arch in ARM:
            notes.append("mapped once the guest OS drives cirrus; AAVMF does not")
        size = int(c.value) * MiB if c else CIRRUS_VRAM
        return [bar(f"cirrus-vga vram ({size // MiB} MiB)", size, 0,
                    note="; ".join(notes) or None)]
    if model == "bochs":
        return [bar("bochs-display vram", pow2ceil(v.vram or DEFAULT_VRAM["bochs"]), 0)]
    if model == "vmvga":
        return [bar("vmware-svga vram", _vga_vram(v.vram or DEFAULT_VRAM["vmvga"]), 1),
                bar("vmware-svga FIFO", VMSVGA_FIFO, 2)]
    if model == "virtio":
        return [bar("virtio-vga vram", VIRTIO_VGA_VRAM, 0)] if v.primary else []
    if model == "qxl":
        return _qxl(v, bar)
    return []


def _vga_vram(vram: int) -> int:
    # libvirt first rounds vram up to a power of two KiB (virDomainVideoDefPostParse),
    # then passes vgamem_mb = vram / 1024: vram='9000' is 16 MiB, not 8.
    mb = min(max(pow2ceil(vram) // MiB, 1), 512)
    return pow2ceil(mb) * MiB


def _qxl(v: Video, bar: Callable[..., Exposure]) -> list[Exposure]:
    vgamem = min(max((v.vgamem or QXL_DEFAULT_VGAMEM) // MiB, 8), 256) * MiB
    ram = max(v.ram or QXL_DEFAULT_RAM, 2 * vgamem)
    # qxl-vga's BAR0 is the VGA RAM too, so vga_common_init's 512 MiB clamp applies;
    # a secondary qxl allocates "qxl.vgavram" at the full size (qxl_realize_secondary).
    ram = _vga_vram(ram) if v.primary else pow2ceil(ram)
    vram32 = pow2ceil(max(v.vram or DEFAULT_VRAM["qxl"], 4096))
    vram64 = pow2ceil(max(v.vram64 or 0, vram32))
    name = "qxl-vga" if v.primary else "qxl"
    # QXL_RAM/VRAM/ROM_RANGE_INDEX (spice-protocol qxl_dev.h) and QXL_VRAM64_RANGE_INDEX.
    out = [bar(f"{name} ram BAR0", ram, 0), bar(f"{name} vram32 BAR1 (alias)", vram32, 1)]
    if vram64 > vram32:
        out.append(bar(f"{name} vram64 BAR4", vram64, 4))
    out.append(bar(f"{name} device ROM BAR2", QXL_ROM, 2, readonly=True))
    return out
