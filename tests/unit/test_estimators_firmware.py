"""x86 firmware regions: pc.bios, its isa-bios alias, pc.rom, OVMF's isa-bios copy."""

from __future__ import annotations

from typing import Any

import pytest
from memlock_guard.accounting.ledger import Backing, Kind
from memlock_guard.host import probe as hostmod

from ..conftest import PINNED_HOST
from .builders import KiB, MiB, hostdevs, ledger, of_kind, sizes

PFLASH = "<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>"
OVMF_CODE_4M = 3653632


def _host(**changes: Any) -> hostmod.HostFacts:
    facts = dict(PINNED_HOST)
    roms = dict(facts["rom_sizes"])  # type: ignore[arg-type]
    roms.update(changes.pop("rom_sizes", {}))
    facts.update(changes, rom_sizes=roms)
    return hostmod.collect(override=facts)


def _firmware(host: hostmod.HostFacts, **kw: Any) -> list:
    return of_kind(ledger(host, hostdevs(1), **kw), Kind.FIRMWARE)


def test_seabios_maps_pc_bios_its_isa_bios_alias_and_pc_rom(pinned_host):
    fw = _firmware(pinned_host, machine="pc-i440fx-7.2")
    bios = PINNED_HOST["rom_sizes"]["bios-256k.bin"]  # type: ignore[index]
    assert sizes(fw) == sizes_of(bios, 128 * KiB, 128 * KiB)
    assert all(i.readonly for i in fw)
    # pc.rom is option-ROM space QEMU never writes: a zero-fill tail; the BIOS is file-backed.
    assert sorted(i.backing for i in fw) == sorted(
        [Backing.FILE_ROM, Backing.FILE_ROM, Backing.ZERO_FILL])
    zero = [i for i in fw if i.backing is Backing.ZERO_FILL]
    assert [i.bytes for i in zero] == [128 * KiB]


@pytest.mark.parametrize(("bios", "isa"), [(256 * KiB, 128 * KiB), (128 * KiB, 128 * KiB),
                                           (64 * KiB, 64 * KiB), (1 * MiB, 128 * KiB)])
def test_isa_bios_alias_is_the_top_128_kib_of_the_bios_at_most(bios, isa):
    fw = _firmware(_host(rom_sizes={"bios-256k.bin": bios}))
    file_backed = sorted(i.bytes for i in fw if i.backing is Backing.FILE_ROM)
    assert file_backed == sorted([bios, isa])


def test_a_rom_loader_is_a_bios_of_the_file_size():
    path = "/usr/share/OVMF/OVMF.fd"
    fw = _firmware(_host(rom_sizes={path: 2 * MiB}),
                   os_extra=f"<loader type='rom'>{path}</loader>")
    assert sizes(fw) == sizes_of(2 * MiB, 128 * KiB, 128 * KiB)


@pytest.mark.parametrize(("qemu", "machine", "copy"), [
    ("7.2.0", "pc-q35-7.2", True),    # QEMU < 9.1: always a RAM copy
    ("9.0.0", "q35", True),           # alias of a <= 9.0 machine
    ("9.2.0", "pc-q35-9.0", True),    # 9.0 machine type keeps the compat behaviour
    ("9.2.0", "pc-i440fx-8.2", True),
    ("9.1.0", "pc-q35-9.1", False),   # 9.1 machine: an alias of the ROM device, skipped
    ("9.2.0", "q35", False),          # newest machine of a 9.2 QEMU
    ("10.0.0", "pc-q35-10.0", False),
])
def test_pflash_isa_bios_copy_only_on_machine_types_up_to_9_0(qemu, machine, copy):
    fw = _firmware(_host(qemu_version=qemu), machine=machine, os_extra=PFLASH)
    copies = [i for i in fw if i.backing is Backing.FILE_ROM]
    assert [i.bytes for i in copies] == ([128 * KiB] if copy else [])


def test_pflash_itself_is_not_mapped(pinned_host):
    # A ROM device (romd): VFIO's listener skips it, so the 3.5 MiB image never counts.
    fw = _firmware(pinned_host, os_extra=PFLASH)
    assert OVMF_CODE_4M not in [i.bytes for i in fw]
    assert all(i.bytes <= 128 * KiB for i in fw)


def test_firmware_autoselection_efi_is_pflash(pinned_host):
    assert sizes(_firmware(pinned_host, os_attrs=" firmware='efi'")) == sizes(
        _firmware(pinned_host, os_extra=PFLASH))


def test_microvm_has_no_pc_rom(pinned_host):
    fw = _firmware(pinned_host, machine="microvm")
    assert [i for i in fw if i.backing is Backing.ZERO_FILL] == []


@pytest.mark.parametrize(("arch", "machine"), [("aarch64", "virt"), ("ppc64", "pseries"),
                                               ("s390x", "s390-ccw-virtio")])
def test_non_x86_firmware_maps_nothing_of_its_own(pinned_host, arch, machine):
    assert _firmware(pinned_host, arch=arch, machine=machine) == []


def sizes_of(*n: int):
    from collections import Counter

    return Counter(n)
