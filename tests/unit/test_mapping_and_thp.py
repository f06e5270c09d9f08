"""The ledger's join key to QEMU (``mapping``), and transparent huge pages in ROM BARs.

Measured on QEMU 7.2 (docs/sources.md §8): with THP "madvise" (QEMU madvises every RAM
block MADV_HUGEPAGE) a 1100 KiB ``<rom file>`` populated its whole 2 MiB BAR and a
2600 KiB one its whole 4 MiB BAR, so their tails are not zero-fill.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from memlock_guard.accounting.ledger import Backing, Kind, device_mapping, valid_mapping
from memlock_guard.hook import cache as decision_cache
from memlock_guard.host import probe as hostmod
from memlock_guard.host import sources as host_sources
from memlock_guard.support.errors import InputError

from ..conftest import PINNED_HOST
from .builders import PAGE, KiB, MiB, domain_xml, ledger, of_kind, report

ROM = "/var/lib/libvirt/images/big.rom"


def _host(size: int, thp: str | None) -> hostmod.HostFacts:
    return hostmod.collect(override={**PINNED_HOST, "rom_sizes": {ROM: size},
                                     "transparent_hugepage": thp})


def _rom_items(host: hostmod.HostFacts) -> dict[Backing, int]:
    nic = f"<interface type='user'><model type='e1000'/><rom file='{ROM}'/></interface>"
    items = of_kind(ledger(host, nic), Kind.OPTION_ROM)
    out: dict[Backing, int] = {}
    for i in items:
        out[i.backing] = out.get(i.backing, 0) + i.bytes
    return out


@pytest.mark.parametrize("thp", ["always", "madvise", None])
@pytest.mark.parametrize(("size", "written", "tail"), [
    (1100 * KiB, 2 * MiB, 0),              # measured: W512, no page left empty
    (2600 * KiB, 4 * MiB, 0),              # measured: W1024
    (2 * MiB + PAGE, 4 * MiB, 0),          # one page into the second extent fills it
    (5 * MiB, 6 * MiB, 2 * MiB),           # the last extent of the 8 MiB BAR stays empty
    (600 * KiB, 600 * KiB, 424 * KiB),     # a BAR below 2 MiB holds no huge page
    (2 * MiB, 2 * MiB, 0),
])
def test_thp_fills_whole_extents_of_big_rom_bars(thp, size, written, tail):
    got = _rom_items(_host(size, thp))
    assert got.get(Backing.FILE_ROM) == written
    assert got.get(Backing.ZERO_FILL, 0) == tail


@pytest.mark.parametrize(("size", "tail"), [(1100 * KiB, 948 * KiB), (2600 * KiB, 1496 * KiB)])
def test_without_thp_only_the_files_pages_are_written(size, tail):
    got = _rom_items(_host(size, "never"))
    assert got[Backing.ZERO_FILL] == tail


def test_the_item_says_why_its_tail_is_gone_and_tolerant_forgives_less():
    nic = f"<interface type='user'><model type='e1000'/><rom file='{ROM}'/></interface>"
    xml = domain_xml(nic + "<hostdev mode='subsystem' type='pci' managed='yes'><source>"
                     "<address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>"
                     "</source></hostdev>")
    on = report(_host(1100 * KiB, "madvise"), xml)
    off = report(_host(1100 * KiB, "never"), xml)
    (item,) = [i for i in on.ledger.items if i.kind is Kind.OPTION_ROM]
    assert item.note and "2 MiB extents" in item.note and "madvise" in item.note
    assert on.verdict.required_strict == off.verdict.required_strict
    assert on.verdict.required_tolerant - off.verdict.required_tolerant == 948 * KiB


# -- the host fact --------------------------------------------------------------------------


def _sysfs(tmp_path: Path, top: str | None, pmd: str | None) -> Path:
    d = tmp_path / "thp"
    d.mkdir()
    if top is not None:
        (d / "enabled").write_text(top + "\n")
    (d / "hpage_pmd_size").write_text("2097152\n")
    if pmd is not None:
        (d / "hugepages-2048kB").mkdir()
        (d / "hugepages-2048kB" / "enabled").write_text(pmd + "\n")
    return d


@pytest.mark.parametrize(("top", "pmd", "mode"), [
    ("always [madvise] never", None, "madvise"),                       # before Linux 6.8
    ("[always] madvise never", "always [inherit] madvise never", "always"),
    ("always madvise [never]", "always inherit [madvise] never", "madvise"),  # per size wins
    ("always [madvise] never", "always inherit madvise [never]", "never"),
    (None, None, None),                                                # no THP in the kernel
    ("garbage", None, None),
])
def test_thp_mode_is_read_from_sysfs(tmp_path, monkeypatch, top, pmd, mode):
    monkeypatch.setattr(host_sources, "THP_DIR", str(_sysfs(tmp_path, top, pmd)))
    assert host_sources.thp_enabled() == mode


def test_probe_reads_it_and_the_override_wins(tmp_path, monkeypatch):
    monkeypatch.setattr(host_sources, "THP_DIR",
                        str(_sysfs(tmp_path, "[always] madvise never", None)))
    facts = hostmod.collect()
    assert facts.transparent_hugepage == "always" and facts.thp_fills_extents
    assert ("transparent_hugepage", "host") in facts.provenance
    facts = hostmod.collect(override={"transparent_hugepage": "never"})
    assert facts.transparent_hugepage == "never" and not facts.thp_fills_extents
    assert hostmod.collect(override={"probe_host": False}).thp_fills_extents  # unknown: on
    with pytest.raises(InputError, match="transparent_hugepage must be one of"):
        hostmod.collect(override={"transparent_hugepage": "sometimes"})


def test_the_hooks_decision_cache_fingerprints_thp(tmp_path, monkeypatch):
    sysfs = _sysfs(tmp_path, "always [madvise] never", None)
    monkeypatch.setattr(host_sources, "THP_DIR", str(sysfs))
    policy = tmp_path / "policy.xml"
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps(PINNED_HOST))
    args = ("prepare", domain_xml(), str(policy), str(facts))
    before = decision_cache.key(*args)
    assert before == decision_cache.key(*args)
    (sysfs / "enabled").write_text("always madvise [never]\n")
    assert decision_cache.key(*args) != before


# -- the join key ---------------------------------------------------------------------------


def test_every_pinned_item_of_a_running_domain_carries_its_mapping(pinned_host):
    devices = ("<video><model type='qxl'/><alias name='video0'/></video>"
               "<video><model type='qxl'/><alias name='video1'/></video>"
               "<interface type='user'><model type='virtio'/><alias name='net0'/></interface>"
               "<interface type='user'><model type='e1000'/><alias name='ua-nic'/>"
               "</interface>")
    got = {(i.source, i.mapping) for i in ledger(pinned_host, devices).items}
    keys = {m for _, m in got}
    assert {"pc.bios", "isa-bios", "pc.rom", "video0/bar0", "video0/bar1", "video0/bar2",
            "video0/bar6", "video0/vga-window", "video1/bar0", "video1/bar1",
            "video1/bar2", "net0/bar6", "ua-nic/bar6"} <= keys
    # The ROM BAR's file part and its tail share the BAR's key.
    assert sorted(s for s, m in got if m == "net0/bar6") == [
        "interface net0 virtio ROM BAR efi-virtio.rom",
        "interface net0 virtio ROM BAR efi-virtio.rom (never-written tail)"]
    assert {s for s, m in got if m is None} == {"guest RAM"}


def test_vmware_svga_maps_its_vram_at_bar1_and_its_fifo_at_bar2(pinned_host):
    items = ledger(pinned_host, "<video><model type='vmvga'/><alias name='v'/></video>").items
    assert {i.source.split(" ", 2)[2]: i.mapping for i in items if i.kind is Kind.VIDEO} \
        == {"vmware-svga vram": "v/bar1", "vmware-svga FIFO": "v/bar2",
            "legacy VGA window alias (graphics modes)": "v/vga-window",
            "ROM BAR vgabios-vmware.bin": "v/bar6",
            "ROM BAR vgabios-vmware.bin (never-written tail)": "v/bar6"}


@pytest.mark.parametrize("alias", [None, "", "net 0", "0net", "a/b", "x" * 200, "ü"])
def test_no_mapping_without_an_alias_qemu_could_take_as_its_id(alias):
    assert device_mapping(alias, 6) is None


def test_mapping_keys():
    assert device_mapping("ua-gpu.0_x", 6) == "ua-gpu.0_x/bar6"
    assert device_mapping("video0", "vga-window") == "video0/vga-window"
    assert all(valid_mapping(k) for k in ("pc.bios", "isa-bios", "pc.rom", "n/bar0"))
    assert not any(valid_mapping(k) for k in ("pc.ram", "n/bar7", "n/vram", "/bar6"))
