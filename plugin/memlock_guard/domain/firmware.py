"""``<os>``: architecture, machine type (and its version), and firmware."""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

from .xmlmap import Element, attr, switch, text

_VERSIONED = re.compile(r"-(\d+)\.(\d+)(?:$|[.-])")


class Machine(NamedTuple):
    name: str | None  # as written: pc-q35-7.2, q35, pc, pseries-8.0, virt ...

    @property
    def version(self) -> tuple[int, int] | None:
        """(7, 2) for ``pc-q35-7.2``; None for an unversioned alias like ``q35``."""
        return _machine_version(self.name)

    @property
    def family(self) -> str:
        """q35 | i440fx | microvm | isapc | pseries | virt | s390-ccw | other."""
        return _machine_family(self.name)


# Estimators and baselines ask for these several times per domain, and a host runs a
# handful of machine types: parse each name once.
@functools.lru_cache(maxsize=512)
def _machine_version(name: str | None) -> tuple[int, int] | None:
    if not name:
        return None
    m = _VERSIONED.search(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


@functools.lru_cache(maxsize=512)
def _machine_family(name: str | None) -> str:
    n = (name or "").lower()
    if "q35" in n:
        return "q35"
    if n == "pc" or n.startswith("pc-i440fx") or re.match(r"pc-\d", n):
        return "i440fx"
    for fam in ("microvm", "isapc", "pseries", "s390-ccw", "virt"):
        if n.startswith(fam):
            return fam
    return "other"


class Firmware(NamedTuple):
    autoselect: str | None  # <os firmware='efi|bios'>
    loader_path: str | None
    loader_type: str | None  # rom | pflash
    loader_readonly: bool | None
    direct_kernel: bool  # <os><kernel> boots without a disk (linuxboot via fw_cfg)

    @property
    def kind(self) -> str:
        """``seabios`` | ``pflash`` | ``rom``: how QEMU will load the firmware.

        libvirt turns firmware='efi' into a pflash loader (its descriptors for OVMF
        are pflash); a loader without type= is a ROM image given with -bios.
        """
        if self.loader_type == "pflash":
            return "pflash"
        if self.loader_type == "rom" or (self.loader_path and self.loader_type is None
                                         and self.autoselect != "efi"):
            return "rom"
        if self.autoselect == "efi" or (self.loader_path and "ovmf" in self.loader_path.lower()):
            return "pflash"
        return "seabios"


NO_FIRMWARE = Firmware(autoselect=None, loader_path=None, loader_type=None,
                       loader_readonly=None, direct_kernel=False)


class Os(NamedTuple):
    """What ``<os>`` says: ``<type arch= machine=>`` and the firmware."""

    arch: str | None
    machine: str | None
    firmware: Firmware

    @classmethod
    def from_xml(cls, os_blocks: list[Element] | None) -> Os:
        """``string(./os/type/@arch)``, ``@machine`` and the Firmware, in one pass.

        Each value comes from the first element that has it, across repeated ``<os>``
        blocks, as libvirt's XPath lookups read them (./os/loader[1], ./os/@firmware ...).
        """
        if not os_blocks:
            return NO_OS
        arch = machine = loader = autoselect = None
        kernel = False
        for block in os_blocks:
            if autoselect is None:
                autoselect = block.get("firmware")
            for c in block:
                t = c.tag
                if t == "type":
                    if arch is None:
                        arch = c.get("arch")
                    if machine is None:
                        machine = c.get("machine")
                elif t == "loader":
                    if loader is None:
                        loader = c
                elif t == "kernel":
                    kernel = True
        if loader is None and autoselect is None and not kernel:
            firmware = NO_FIRMWARE
        else:
            firmware = Firmware(
                autoselect=autoselect.strip() if autoselect is not None else None,
                loader_path=text(loader),
                loader_type=attr(loader, "type"),
                loader_readonly=switch(attr(loader, "readonly")),
                direct_kernel=kernel,
            )
        return cls(arch.strip() if arch is not None else None,
                   machine.strip() if machine is not None else None, firmware)


NO_OS = Os(None, None, NO_FIRMWARE)
