"""Video devices: RAM BARs (read-write device RAM) and the primary's VGA BIOS ROM BAR.

Differential where possible: a rule is the difference between two domains that differ
in one attribute, so items the rule does not touch cancel out.
"""

from __future__ import annotations

import pytest
from memlock_guard.accounting.ledger import Backing, Kind

from .builders import GiB, KiB, MiB, hostdevs, ledger, of_kind, pow2ceil, sizes, total

VGABIOS = 39936  # vgabios-*.bin in PINNED_HOST (qxl, stdvga, virtio)


def _video(host, videos: str):
    return of_kind(ledger(host, hostdevs(1) + videos), Kind.VIDEO)


def _rw(items):
    """Read-write device RAM: the RAM BARs (and RAM aliases) of the video devices."""
    return sizes(i for i in items if i.backing is Backing.DEVICE_RAM and not i.readonly)


def _model(model: str, **attrs: str) -> str:
    extra = "".join(f" {k}='{v}'" for k, v in attrs.items())
    return f"<video><model type='{model}'{extra}/></video>"


@pytest.mark.parametrize(("vram_kib", "bar"), [
    (16384, 16 * MiB),      # libvirt's default
    (8192, 8 * MiB),
    (1024, 1 * MiB),
    (24576, 32 * MiB),      # QEMU rounds vgamem_mb up to a power of two
    (1048576, 512 * MiB),   # and clamps it to 512
])
def test_vga_ram_bar_is_vram_rounded_to_a_power_of_two_and_clamped(pinned_host, vram_kib, bar):
    rw = _rw(_video(pinned_host, _model("vga", vram=str(vram_kib))))
    assert rw[bar] == 1
    assert max(rw) == bar


def test_vga_default_vram_is_16_mib(pinned_host):
    assert _rw(_video(pinned_host, _model("vga"))) == _rw(
        _video(pinned_host, _model("vga", vram="16384")))


@pytest.mark.parametrize("vram", ["16384", "65536", "4096", None])
def test_cirrus_is_a_fixed_4_mib_whatever_vram_says(pinned_host, vram):
    attrs = {"vram": vram} if vram else {}
    rw = _rw(_video(pinned_host, _model("cirrus", **attrs)))
    assert rw[4 * MiB] == 1
    assert max(rw) == 4 * MiB


def test_qxl_defaults_ram_64_vram32_64_vrom_8k_and_no_bar4(pinned_host):
    items = _video(pinned_host, _model("qxl"))
    rw = _rw(items)
    assert rw[64 * MiB] == 2  # BAR0 ram and the BAR1 vram32 alias
    assert 128 * MiB not in rw  # vram64 == vram32: no BAR4
    ro_ram = [i.bytes for i in items if i.backing is Backing.DEVICE_RAM and i.readonly]
    assert ro_ram == [8 * KiB]  # qxl.vrom


def _qxl_total(host, primary: bool = True, **attrs: str) -> int:
    extra = "" if primary else _model("virtio")  # something else takes the primary slot
    qxl = _model("qxl", **attrs)
    return total(_video(host, extra + qxl)) - total(_video(host, extra))


def test_qxl_bar0_is_at_least_twice_vgamem(pinned_host):
    small = _qxl_total(pinned_host, ram="16384", vgamem="16384")  # raised to 32 MiB
    assert small == _qxl_total(pinned_host, ram="32768", vgamem="16384")
    big = _qxl_total(pinned_host, ram="65536", vgamem="65536")  # raised to 128 MiB
    assert big - _qxl_total(pinned_host, ram="65536", vgamem="16384") == 64 * MiB


def test_qxl_bar1_is_the_vram32_alias(pinned_host):
    assert (_qxl_total(pinned_host, vram="65536") - _qxl_total(pinned_host, vram="32768")
            == 32 * MiB)


@pytest.mark.parametrize(("vram64", "extra"), [
    (None, 0), ("65536", 0), ("32768", 0),  # vram64 <= vram32: qxl.vram is vram32 big, no BAR4
    ("131072", 128 * MiB),                  # BAR4 maps all of qxl.vram, vram32 included
    ("262144", 256 * MiB),
])
def test_qxl_bar4_only_when_vram64_exceeds_vram32(pinned_host, vram64, extra):
    attrs = {"vram": "65536"} | ({"vram64": vram64} if vram64 else {})
    assert _qxl_total(pinned_host, **attrs) - _qxl_total(pinned_host, vram="65536") == extra


def test_secondary_qxl_is_its_bars_without_a_vga_bios(pinned_host):
    # qxl (not qxl-vga): BAR0 ram + BAR1 vram32 + the 8 KiB vrom; no ROM BAR, no VGA alias.
    assert _qxl_total(pinned_host, primary=False) == 64 * MiB + 64 * MiB + 8 * KiB


@pytest.mark.parametrize(("vram_kib", "bar"), [(16384, 16 * MiB), (24576, 32 * MiB),
                                               (65536, 64 * MiB)])
def test_bochs_display_ram_is_vram_rounded_to_a_power_of_two(pinned_host, vram_kib, bar):
    rw = _rw(_video(pinned_host, _model("bochs", vram=str(vram_kib))))
    assert rw[bar] == 1 and max(rw) == bar


def test_virtio_vga_primary_is_8_mib_and_ignores_vram(pinned_host):
    rw = _rw(_video(pinned_host, _model("virtio", vram="262144")))
    assert rw[8 * MiB] == 1 and max(rw) == 8 * MiB


def test_virtio_gpu_secondary_adds_nothing(pinned_host):
    one = _video(pinned_host, _model("vga"))
    two = _video(pinned_host, _model("vga") + _model("virtio"))
    assert sizes(two) == sizes(one)


@pytest.mark.parametrize("model", ["ramfb", "none"])
def test_ramfb_and_none_map_nothing(pinned_host, model):
    assert _video(pinned_host, _model(model)) == []


@pytest.mark.parametrize("model", ["vga", "qxl", "virtio", "cirrus", "bochs"])
def test_primary_vga_bios_rom_bar_is_the_file_rounded_to_a_power_of_two(pinned_host, model):
    rom = [i for i in _video(pinned_host, _model(model))
           if i.backing in (Backing.FILE_ROM, Backing.ZERO_FILL)]
    size = {"cirrus": 39424, "bochs": 28672}.get(model, VGABIOS)
    assert sum(i.bytes for i in rom) == pow2ceil(size)
    assert all(i.readonly and i.transient for i in rom)


def test_a_video_on_a_non_pci_bus_maps_nothing(pinned_host):
    ccw = ("<video><model type='virtio'/>"
           "<address type='ccw' cssid='0xfe' ssid='0x0' devno='0x0002'/></video>")
    assert _video(pinned_host, ccw) == []


def test_vga_vram_is_first_rounded_by_libvirt_in_kib(pinned_host):
    # libvirt rounds vram='9000' up to 16384 KiB, then passes vgamem_mb=16: not 8 MiB.
    rw = _rw(_video(pinned_host, _model("vga", vram="9000")))
    assert rw[16 * MiB] == 1 and max(rw) == 16 * MiB


def test_graphics_alone_get_the_default_video(pinned_host):
    implicit = _video(pinned_host, "<graphics type='vnc'/>")
    assert sizes(implicit) == sizes(_video(pinned_host, _model("cirrus")))
    assert _rw(implicit)[4 * MiB] == 1


def test_qxl_ram_beyond_512_mib_is_clamped_only_on_the_primary(pinned_host):
    # qxl-vga's BAR0 goes through vga_common_init (clamp 512 MiB); a secondary qxl
    # allocates qxl.vgavram at the full size.
    huge = {"ram": "1048576", "vram": "65536", "vgamem": "16384"}
    assert _qxl_total(pinned_host, primary=False, **huge) == GiB + 64 * MiB + 8 * KiB
    primary = _qxl_total(pinned_host, **huge) - _qxl_total(pinned_host, ram="65536",
                                                            vram="65536", vgamem="16384")
    assert primary == 512 * MiB - 64 * MiB
