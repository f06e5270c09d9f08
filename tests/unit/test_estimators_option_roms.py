"""PCI option-ROM BARs: pow2ceil(file size), split into file bytes and a zero-fill tail."""

from __future__ import annotations

from typing import Any

import pytest
from memlock_guard.accounting.ledger import Backing, Kind
from memlock_guard.host import probe as hostmod

from ..conftest import PINNED_HOST
from .builders import PAGE, MiB, hostdevs, ledger, of_kind, pow2ceil, round_up


def _host(**roms: int) -> hostmod.HostFacts:
    sizes = dict(PINNED_HOST["rom_sizes"])  # type: ignore[arg-type]
    sizes.update(roms)
    return hostmod.collect(override={**PINNED_HOST, "rom_sizes": sizes})


def _roms(host: hostmod.HostFacts, devices: str, **kw: Any) -> list:
    return of_kind(ledger(host, hostdevs(1, first_bus=0x70) + devices, **kw), Kind.OPTION_ROM)


def _nic(model: str | None = None, rom: str = "", itype: str = "network") -> str:
    m = f"<model type='{model}'/>" if model else ""
    src = "<source network='default'/>" if itype == "network" else ""
    return f"<interface type='{itype}'>{src}{m}{rom}</interface>"


@pytest.mark.parametrize("size", [249344, 70000, 4097, 65536, 4096, 1, 600000])
def test_rom_bar_is_pow2ceil_of_the_file_split_into_file_and_zero_fill(size):
    roms = _roms(_host(**{"efi-virtio.rom": size}), _nic("virtio"))
    bar = pow2ceil(size)
    assert sum(i.bytes for i in roms) == bar
    written = [i.bytes for i in roms if i.backing is Backing.FILE_ROM]
    tail = [i.bytes for i in roms if i.backing is Backing.ZERO_FILL]
    # QEMU copies the file into the start of the BAR: those pages (a partial last page
    # included) are real; the rest was never written.
    assert written == [min(round_up(size, PAGE), bar)]
    assert sum(tail) == bar - written[0]
    assert all(i.readonly and i.transient for i in roms)


@pytest.mark.parametrize(("model", "rom"), [
    ("virtio", "efi-virtio.rom"), ("e1000", "efi-e1000.rom"), ("e1000e", "efi-e1000e.rom"),
    ("rtl8139", "efi-rtl8139.rom"), (None, "efi-rtl8139.rom"),  # x86 default model
])
def test_each_nic_model_has_its_own_rom(model, rom):
    # A distinct size per file shows which file was used.
    roms = _roms(_host(**{rom: 300000}), _nic(model))
    assert sum(i.bytes for i in roms) == pow2ceil(300000)


@pytest.mark.parametrize("rom", ["<rom enabled='no'/>", "<rom bar='off'/>"])
def test_no_rom_bar_when_disabled(pinned_host, rom):
    assert _roms(pinned_host, _nic("virtio", rom)) == []


def test_a_rom_file_replaces_the_default_rom():
    path = "/opt/roms/ipxe-big.rom"
    roms = _roms(_host(**{path: 600000}), _nic("virtio", f"<rom file='{path}'/>"))
    assert sum(i.bytes for i in roms) == 1 * MiB


def test_a_missing_rom_file_is_assumed_and_says_so(pinned_host):
    roms = _roms(pinned_host, _nic("virtio", "<rom file='/nowhere/x.rom'/>"))
    assert roms and any(i.note for i in roms)


def test_passthrough_own_rom_counts_zero(pinned_host):
    assert _roms(pinned_host, "") == []  # the hostdev from _roms
    assert _roms(pinned_host, _nic(itype="hostdev").replace(
        "</interface>", "<source><address type='pci' domain='0' bus='0x3b' slot='0x2'"
        " function='0x0'/></source></interface>")) == []


def test_passthrough_rom_file_counts():
    path = "/opt/roms/gpu-vbios.rom"
    host = _host(**{path: 126976})
    dev = ("<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0'"
           f" bus='0x9' slot='0' function='0'/></source><rom file='{path}'/></hostdev>")
    assert sum(i.bytes for i in _roms(host, dev)) == pow2ceil(126976)
    off = dev.replace(f"<rom file='{path}'/>", f"<rom bar='off' file='{path}'/>")
    assert _roms(host, off) == []


def test_each_emulated_nic_has_its_own_bar(pinned_host):
    one = _roms(pinned_host, _nic("virtio"))
    three = _roms(pinned_host, _nic("virtio") * 2 + _nic("e1000"))
    assert sum(i.bytes for i in three) == 2 * sum(i.bytes for i in one) + pow2ceil(249856)


def test_nic_on_a_non_pci_bus_has_no_rom_bar(pinned_host):
    ccw = _nic("virtio").replace("</interface>", "<address type='ccw' cssid='0xfe'"
                                 " ssid='0x0' devno='0x0001'/></interface>")
    assert _roms(pinned_host, ccw) == []


def test_nic_models_are_matched_case_insensitively_as_libvirt_does(pinned_host):
    assert sum(i.bytes for i in _roms(pinned_host, _nic("ViRtIo"))) == pow2ceil(249344)


@pytest.mark.parametrize(("arch", "machine", "has_rom"), [
    ("aarch64", "virt", True),            # virtio-net: efi-virtio.rom
    ("aarch64", "virt-9.0", True),
    ("armv7l", "vexpress-a9", False),     # lan9118: no option ROM
    ("armv7l", "versatilepb", False),     # smc91c111
    ("x86_64", "pc-q35-7.2", True),       # rtl8139
])
def test_default_nic_model_by_machine(pinned_host, arch, machine, has_rom):
    roms = _roms(pinned_host, _nic(None), arch=arch, machine=machine)
    assert bool(roms) == has_rom
