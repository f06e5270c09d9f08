"""Host facts as data: kernel, VFIO/iommufd parameters, QEMU's ROM files, versions.

``HostFacts`` is what the accounting core and the estimators read about the machine;
this module only holds it and answers questions about it. Reading the host is
probe.py's job, so the core never imports anything that does I/O.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from typing import NamedTuple

from ..support.errors import InputError
from . import sources as host_sources

DEFAULT_DATA_DIRS = host_sources.DATA_DIRS

# Sizes of the ROM images we account for, used when the host has no such file.
# Source: Debian 12 "bookworm" packages qemu-system-data 1:7.2+dfsg-7, seabios 1.16.2,
# ipxe-qemu 1.0.0+git-20190125 (read off /usr/share/{qemu,seabios}, /usr/lib/ipxe/qemu).
DEFAULT_ROM_SIZES: Mapping[str, int] = {
    "bios-256k.bin": 262144,
    "bios.bin": 131072,
    "bios-microvm.bin": 131072,
    "qboot.rom": 65536,
    "vgabios-stdvga.bin": 39936,
    "vgabios-cirrus.bin": 39424,
    "vgabios-qxl.bin": 39936,
    "vgabios-virtio.bin": 39936,
    "vgabios-vmware.bin": 39936,
    "vgabios-bochs-display.bin": 28672,
    "vgabios-ramfb.bin": 29184,
    "vgabios-ati.bin": 39936,
    "efi-virtio.rom": 249344,
    "efi-e1000.rom": 249856,
    "efi-e1000e.rom": 249856,
    "efi-rtl8139.rom": 249856,
    "efi-ne2k_pci.rom": 245760,
    "efi-pcnet.rom": 246272,
    "efi-eepro100.rom": 247808,
    "efi-vmxnet3.rom": 243712,
    # iPXE's legacy images: the eepro100 family's class default, and the romfile
    # pc-i440fx-1.4 gives five NICs (estimators/compat.py); each a 128 KiB BAR.
    "pxe-eepro100.rom": 75264,
    "pxe-e1000.rom": 75264,
    "pxe-ne2k_pci.rom": 74752,
    "pxe-pcnet.rom": 74752,
    "pxe-rtl8139.rom": 75776,
    "pxe-virtio.rom": 75776,
    "pxe-vmxnet3.rom": 74240,
    "OVMF_CODE.fd": 1966080,
    "OVMF_CODE_4M.fd": 3653632,
}

# The display devices whose presence in a QEMU binary we record (``-device help``). A
# build has only those its boards imply (hw/display/Kconfig): virtio-vga only where PC,
# PSERIES, RISCV_VIRT or a LoongArch board implies VIRTIO_VGA, so Debian's aarch64 and
# ppc64 emulators lack it, and libvirt then makes a virtio video virtio-gpu-pci
# (qemuDomainSupportsVideoVga, QEMU_CAPS_DEVICE_VIRTIO_VGA).
PROBED_DEVICES = ("VGA", "cirrus-vga", "qxl-vga", "qxl", "virtio-vga", "virtio-gpu-pci",
                  "vmware-svga", "bochs-display", "ramfb")


def qemu_target(arch: str) -> str:
    """The emulator libvirt runs for a guest arch: qemu-system-TARGET
    (virQEMUCapsGetDefaultEmulator, virQEMUCapsArchToString in qemu_capabilities.c)."""
    return {"i686": "i386", "armv6l": "arm", "armv7l": "arm", "armv7b": "arm"}.get(arch, arch)


class HostFacts(NamedTuple):
    kernel_release: str | None = None
    vfio_type1_params: tuple[tuple[str, str], ...] = ()
    iommufd_params: tuple[tuple[str, str], ...] = ()
    iommufd_available: bool = False
    qemu_data_dirs: tuple[str, ...] = ()
    # File name (or absolute path, for <rom file> and loaders) -> size in bytes.
    rom_files: tuple[tuple[str, int], ...] = ()
    # Absolute paths a domain names that were looked for here and do not exist.
    missing_files: tuple[str, ...] = ()
    libvirt_version: tuple[int, int, int] | None = None
    qemu_version: tuple[int, int, int] | None = None
    # RLIMIT_MEMLOCK that QEMU inherits when libvirt sets none (systemd: 64 MiB).
    inherited_memlock: int | None = 64 * 1024 * 1024
    # PCI addresses of NVLink2 bridges (ppc64 only; libvirt reads ibm,npu from sysfs).
    nvlink2_bridges: tuple[str, ...] = ()
    # Transparent huge pages for anonymous memory: always | madvise | never; None unknown.
    transparent_hugepage: str | None = None
    # IOMMU group of each host PCI device a domain passes through that has one
    # (/sys/bus/pci/devices/ADDR/iommu_group), as libvirt reads them to isolate pSeries
    # hostdevs; None: not read (another host's report), () read and none has one.
    iommu_groups: tuple[tuple[str, int], ...] | None = None
    # Which PROBED_DEVICES each QEMU target's emulator has: (target, devices). A target
    # missing here was not asked (install-hook asks every installed emulator).
    qemu_devices: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # Where each fact came from: host | default | override.
    provenance: tuple[tuple[str, str], ...] = ()

    @property
    def thp_fills_extents(self) -> bool:
        """Whether a write into QEMU's RAM blocks populates a whole 2 MiB extent.

        QEMU madvises every RAM block MADV_HUGEPAGE (ram_block_add), so "madvise" is as
        good as "always". Unknown counts as enabled: tolerant accounting must never
        forgive bytes that may be real.
        """
        return self.transparent_hugepage != "never"

    @property
    def kernel_version(self) -> tuple[int, int] | None:
        return _kernel_version(self.kernel_release)

    def rom_size(self, name: str) -> tuple[int | None, str]:
        """(size, where it came from) for a ROM file name or absolute path.

        An absolute path that is not here is sized by its file name, as the data
        directories hold it (``missing_files`` says whether it was looked for)."""
        roms = _rom_index(self.rom_files)
        size = roms.get(name)
        if size is not None:
            return size, "host"
        base = os.path.basename(name)
        if base != name:
            size = roms.get(base)
            if size is not None:
                return size, "host"
        if base in DEFAULT_ROM_SIZES:
            return DEFAULT_ROM_SIZES[base], "default"
        return None, "unknown"

    @property
    def iommu_group_map(self) -> dict[str, int] | None:
        return None if self.iommu_groups is None else dict(self.iommu_groups)

    def has_device(self, arch: str, device: str) -> bool | None:
        """Whether the emulator for ``arch`` has this QEMU device; None: not probed."""
        target = qemu_target(arch)
        for name, devices in self.qemu_devices:
            if name == target:
                return device in devices
        return None

    def param(self, module: str, name: str) -> str | None:
        params = self.vfio_type1_params if module == "vfio_iommu_type1" else self.iommufd_params
        for key, value in params:
            if key == name:
                return value
        return None


# Derived lookups, built once per host: estimators ask for ROM sizes on every domain.
# Keyed by the identity of the facts' rom_files (one host per process, as a rule).
_ROM_INDEX: tuple[tuple[tuple[str, int], ...], dict[str, int]] = ((), {})


def _rom_index(rom_files: tuple[tuple[str, int], ...]) -> dict[str, int]:
    global _ROM_INDEX
    seen, index = _ROM_INDEX
    if seen is not rom_files:
        index = {}
        for key, size in rom_files:
            index.setdefault(key, size)  # the first wins, as a scan of rom_files would
        _ROM_INDEX = (rom_files, index)
    return index


@functools.lru_cache(maxsize=16)
def _kernel_version(release: str | None) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", release or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def parse_version(text: str, *, what: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"\s*(\d{1,4})\.(\d{1,4})(?:\.(\d{1,4}))?\s*", text)
    if not m:
        raise InputError(f"{what} {text[:30]!r} is not a version like 9.0.0")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
