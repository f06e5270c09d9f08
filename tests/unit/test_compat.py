"""Old machine types and other architectures: what QEMU 7.2 maps there (issue 15 §3).

The sizes are the ones measured against QEMU 7.2 (docs/sources.md §10); each ledger item
a compat property changes names it in its note.
"""

from __future__ import annotations

from typing import Any

import pytest
from memlock_guard.accounting.ledger import Kind, LedgerItem
from memlock_guard.domain import Machine
from memlock_guard.estimators.compat import compat, default_seabios
from memlock_guard.host import probe as hostmod
from memlock_guard.host.facts import DEFAULT_ROM_SIZES, HostFacts

from ..conftest import PINNED_HOST
from .builders import KiB, MiB, ledger, of_kind

DEBIAN_ROMS = {  # Debian 12 ipxe-qemu and seabios, as the research measured them
    "pxe-e1000.rom": 75264, "pxe-ne2k_pci.rom": 74752, "pxe-pcnet.rom": 74752,
    "pxe-rtl8139.rom": 75776, "pxe-virtio.rom": 75776, "pxe-eepro100.rom": 75264,
    "efi-ne2k_pci.rom": 245760, "efi-pcnet.rom": 246272, "efi-vmxnet3.rom": 243712,
    "efi-eepro100.rom": 247808, "bios.bin": 131072,
}
AARCH64_DEVICES = ["VGA", "cirrus-vga", "virtio-gpu-pci", "vmware-svga", "bochs-display",
                   "ramfb"]


def _host(**extra: Any) -> HostFacts:
    roms = {**PINNED_HOST["rom_sizes"], **DEBIAN_ROMS}  # type: ignore[dict-item]
    return hostmod.collect(override={**PINNED_HOST, "rom_sizes": roms, **extra})


def _nic(model: str) -> str:
    return f"<interface type='user'><model type='{model}'/></interface>"


def _items(machine: str, devices: str, kind: Kind, *, arch: str = "x86_64",
           host: HostFacts | None = None, **kw: Any) -> list[LedgerItem]:
    return of_kind(ledger(host or _host(), devices, machine=machine, arch=arch, **kw), kind)


def _rom_bar(items: list[LedgerItem]) -> int:
    return sum(i.bytes for i in items)


# ---------------------------------------------------------------- the compat table


@pytest.mark.parametrize(("machine", "applies"), [
    ("pc-i440fx-2.8", True), ("pc-q35-2.8", True), ("pc-i440fx-1.4", True),
    ("virt-2.8", True), ("pseries-2.7", True),  # hw_compat: every architecture
    ("pc-i440fx-2.9", False), ("pc-q35-2.12", False), ("pc", False), ("q35", False),
    ("virt", False), ("pc-q35-7.2", False),
])
def test_hw_compat_2_8_cirrus_vgamem(machine, applies):
    c = compat(Machine(machine), "cirrus-vga", "vgamem_mb")
    assert (c is not None) == applies
    if c:
        assert (c.array, c.value) == ("hw_compat_2_8", "8")


@pytest.mark.parametrize(("machine", "applies"), [
    ("pc-i440fx-1.4", True), ("pc-i440fx-1.5", False), ("pc-i440fx-2.0", False),
    ("virt-2.6", False),  # pc_compat_*: x86 PC machines only
])
def test_pc_compat_1_4_nic_romfiles(machine, applies):
    assert (compat(Machine(machine), "e1000", "romfile") is not None) == applies


def test_global_properties_match_their_type_not_a_sibling():
    # e1000-82545em and the transitional virtio-net are siblings of the named types.
    m = Machine("pc-i440fx-1.4")
    assert compat(m, "e1000-82545em", "romfile") is None
    assert compat(m, "virtio-net-pci-transitional", "romfile") is None


@pytest.mark.parametrize(("machine", "bios"), [
    ("pc-i440fx-1.4", "bios.bin"), ("pc-i440fx-1.7", "bios.bin"), ("isapc", "bios.bin"),
    ("pc-i440fx-2.0", "bios-256k.bin"), ("pc-q35-2.4", "bios-256k.bin"),
    ("pc", "bios-256k.bin"), ("microvm", "bios-microvm.bin"),
])
def test_default_seabios_image_per_machine_type(machine, bios):
    assert default_seabios(Machine(machine))[0] == bios


# --------------------------------------------------------------------- x86 ledgers


def test_cirrus_on_2_8_maps_8_mib_and_the_item_says_why():
    old = _items("pc-i440fx-2.8", "<video><model type='cirrus'/></video>", Kind.VIDEO)
    new = _items("pc-i440fx-2.9", "<video><model type='cirrus'/></video>", Kind.VIDEO)
    vram_old = next(i for i in old if "vram" in i.source)
    vram_new = next(i for i in new if "vram" in i.source)
    assert (vram_old.bytes, vram_new.bytes) == (8 * MiB, 4 * MiB)
    assert vram_old.note and "hw_compat_2_8" in vram_old.note and "pc-i440fx-2.8" in vram_old.note
    assert vram_new.note is None


@pytest.mark.parametrize(("model", "pxe"), [
    ("e1000", "pxe-e1000.rom"), ("virtio", "pxe-virtio.rom"), ("rtl8139", "pxe-rtl8139.rom"),
    ("ne2k_pci", "pxe-ne2k_pci.rom"), ("pcnet", "pxe-pcnet.rom"),
])
def test_pc_i440fx_1_4_gives_five_nics_their_pxe_rom(model, pxe):
    items = _items("pc-i440fx-1.4", _nic(model), Kind.OPTION_ROM)
    assert _rom_bar(items) == 128 * KiB  # a 74-76 KiB image in a 128 KiB BAR
    assert pxe in items[0].source and "pc_compat_1_4" in (items[0].note or "")
    assert _rom_bar(_items("pc-i440fx-1.5", _nic(model), Kind.OPTION_ROM)) == 256 * KiB


def test_the_x86_default_nic_model_gets_the_pxe_rom_on_1_4_too():
    items = _items("pc-i440fx-1.4", "<interface type='user'/>", Kind.OPTION_ROM)
    assert _rom_bar(items) == 128 * KiB and "pxe-rtl8139.rom" in items[0].source


@pytest.mark.parametrize("model", ["virtio-transitional", "e1000-82545em", "e1000e"])
def test_models_the_1_4_compat_does_not_match_keep_the_efi_rom(model):
    assert _rom_bar(_items("pc-i440fx-1.4", _nic(model), Kind.OPTION_ROM)) == 256 * KiB


@pytest.mark.parametrize(("machine", "rom"), [
    ("pc-i440fx-2.6", 0), ("pc-q35-2.6", 0), ("pc-i440fx-1.4", 0),
    ("pc-i440fx-2.7", 256 * KiB), ("pc-q35-2.7", 256 * KiB), ("q35", 256 * KiB),
])
def test_vmxnet3_has_no_rom_up_to_2_6(machine, rom):
    items = _items(machine, _nic("vmxnet3"), Kind.OPTION_ROM)
    assert _rom_bar(items) == rom
    if not rom:  # one empty item, to say why there is no ROM
        assert [i.bytes for i in items] == [0]
        assert "pc_compat_2_6" in (items[0].note or "")


def test_vmxnet3_on_arm_virt_2_6_keeps_its_rom():
    # pc_compat_2_6 is x86's; hw_compat has no vmxnet3 entry.
    items = _items("virt-2.6", _nic("vmxnet3"), Kind.OPTION_ROM, arch="aarch64")
    assert _rom_bar(items) == 256 * KiB


@pytest.mark.parametrize(("machine", "bios"), [
    ("pc-i440fx-1.4", 128 * KiB), ("pc-i440fx-1.7", 128 * KiB), ("pc-i440fx-2.0", 256 * KiB)])
def test_pc_bios_is_bios_bin_up_to_1_7(machine, bios):
    items = _items(machine, "", Kind.FIRMWARE)
    pc_bios = next(i for i in items if i.source.startswith("pc.bios"))
    assert pc_bios.bytes == bios
    assert ("1.7" in (pc_bios.note or "")) == (bios == 128 * KiB)


def test_isapc_keeps_isa_bios_and_pc_rom_mapped():
    # No PAM on isapc: SeaBIOS cannot hide them. Measured: 384 KiB, all always mapped.
    items = _items("isapc", "", Kind.FIRMWARE)
    assert sum(i.bytes for i in items) == 384 * KiB
    assert all(i.window is None for i in items)


# --------------------------------------------------------------------- NIC models


@pytest.mark.parametrize("model", ["i82550", "i82551", "i82557a", "i82557b", "i82557c",
                                   "i82558a", "i82558b", "i82559a", "i82559b", "i82559c",
                                   "i82559er", "i82562", "i82801"])
def test_the_eepro100_family_maps_pxe_eepro100(model):
    items = _items("q35", _nic(model), Kind.OPTION_ROM)
    assert _rom_bar(items) == 128 * KiB and "pxe-eepro100.rom" in items[0].source


def test_the_built_in_table_has_the_eepro100_rom_qemu_loads():
    assert DEFAULT_ROM_SIZES["pxe-eepro100.rom"] == 75264
    host = hostmod.collect(override={"probe_host": False})  # the table alone
    items = _items("q35", _nic("i82559er"), Kind.OPTION_ROM, host=host)
    assert _rom_bar(items) == 128 * KiB
    assert "built-in table" in (items[0].note or "")


@pytest.mark.parametrize("model", ["e1000-82544gc", "e1000-82545em"])
def test_e1000_variants_libvirt_passes_through_map_the_e1000_rom(model):
    items = _items("q35", _nic(model), Kind.OPTION_ROM)
    assert _rom_bar(items) == 256 * KiB and "efi-e1000.rom" in items[0].source


@pytest.mark.parametrize("model", ["tulip", "rocker", "sungem", "usb-net"])
def test_nics_without_a_rom(model):
    assert _items("q35", _nic(model), Kind.OPTION_ROM) == []


def test_an_unknown_nic_model_counts_as_the_largest_nic_rom():
    items = _items("q35", _nic("fancy-nic"), Kind.OPTION_ROM)
    assert _rom_bar(items) == 256 * KiB
    assert "'fancy-nic' is not known" in (items[0].note or "")


# ------------------------------------------------------------------------ aarch64


def _arm(devices: str, kind: Kind, **host: Any) -> list[LedgerItem]:
    return _items("virt-7.2", devices, kind, arch="aarch64", host=_host(**host),
                  os_attrs=" firmware='efi'")


def test_aarch64_virtio_video_is_virtio_gpu_pci_when_the_emulator_has_no_virtio_vga():
    no_vga = _arm("<video><model type='virtio'/></video>", Kind.VIDEO,
                  qemu_devices={"aarch64": AARCH64_DEVICES})
    assert [i.bytes for i in no_vga] == [0]
    assert "virtio-gpu-pci" in no_vga[0].source
    assert "qemu-system-aarch64 has no virtio-vga" in (no_vga[0].note or "")
    # Not probed: assumed present (8 MiB + its VGA BIOS), which can only over-count.
    unknown = _arm("<video><model type='virtio'/></video>", Kind.VIDEO)
    assert sum(i.bytes for i in unknown) >= 8 * MiB


def test_x86_probed_with_virtio_vga_keeps_it():
    host = _host(qemu_devices={"x86_64": ["virtio-vga", "VGA"]})
    items = _items("q35", "<video><model type='virtio'/></video>", Kind.VIDEO, host=host)
    assert any(i.bytes == 8 * MiB for i in items)


@pytest.mark.parametrize(("model", "expected"), [
    ("vga", 16 * MiB + 64 * KiB),  # BAR0 + ROM, no 0xa0000 alias on virt
    ("vmvga", 16 * MiB + 64 * KiB + 64 * KiB),  # vram + FIFO + ROM
    ("bochs", 16 * MiB + 32 * KiB),
])
def test_aarch64_video_has_no_legacy_vga_window(model, expected):
    items = _arm(f"<video><model type='{model}'/></video>", Kind.VIDEO)
    assert sum(i.bytes for i in items) == expected
    assert not any("legacy VGA window" in i.source for i in items)


def test_aarch64_cirrus_still_counts_its_vram_and_says_aavmf_does_not_map_it():
    items = _arm("<video><model type='cirrus'/></video>", Kind.VIDEO)
    vram = next(i for i in items if "vram" in i.source)
    assert vram.bytes == 4 * MiB and "AAVMF does not" in (vram.note or "")


def test_aarch64_firmware_maps_nothing_vfio_sees():
    assert _arm("", Kind.FIRMWARE) == []


def test_aarch64_default_nic_is_virtio_with_its_efi_rom():
    items = _arm("<interface type='user'/>", Kind.OPTION_ROM)
    assert _rom_bar(items) == 256 * KiB and "efi-virtio.rom" in items[0].source


# ------------------------------------------------------------------ host facts


def test_host_facts_override_of_qemu_devices_and_iommu_groups():
    host = _host(qemu_devices={"aarch64": AARCH64_DEVICES}, iommu_groups={"0001:01:00.0": 5})
    assert host.has_device("aarch64", "virtio-vga") is False
    assert host.has_device("aarch64", "VGA") is True
    assert host.has_device("x86_64", "virtio-vga") is None  # not probed
    assert host.iommu_group_map == {"0001:01:00.0": 5}


@pytest.mark.parametrize("bad", [{"qemu_devices": ["x"]}, {"qemu_devices": {"a": "VGA"}},
                                 {"iommu_groups": {"0000:01:00.0": -1}},
                                 {"iommu_groups": []}])
def test_bad_host_facts_are_one_clear_error(bad):
    from memlock_guard.support.errors import InputError

    with pytest.raises(InputError, match=r"host facts: (qemu_devices|iommu_groups)"):
        hostmod.collect(override={"probe_host": False, **bad})


def test_install_hook_caches_each_emulators_devices_for_the_hook(tmp_path):
    # The test command installs qemu-system-x86 and qemu-system-arm (scripts/setup.sh).
    import json

    from memlock_guard.commands.install_hook import cache_host_facts
    from memlock_guard.host.cache import hook_facts

    cached = cache_host_facts(str(tmp_path / "facts.json"))
    devices = cached["qemu_devices"]
    assert isinstance(devices, dict)
    assert set(devices) >= {"x86_64", "aarch64"}, devices
    assert "virtio-vga" in devices["x86_64"] and "virtio-vga" not in devices["aarch64"]
    assert json.loads((tmp_path / "facts.json").read_text())["qemu_devices"] == devices
    host = hook_facts((), str(tmp_path / "facts.json"))
    assert host.has_device("aarch64", "virtio-vga") is False
    assert host.has_device("x86_64", "virtio-vga") is True
