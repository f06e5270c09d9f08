"""measure.py: the HMP parsers and the boot-peak arithmetic, on text captured from QEMU 7.2
under libvirt 9.0 (tests/data/qemu/README.md), and the ``measure`` verb on a fake domain."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from memlock_guard.accounting.engine import build_ledger
from memlock_guard.cli import main
from memlock_guard.domain import parse_domain
from memlock_guard.measure import boot, compare, mappings, peak, qemu_text
from memlock_guard.measure import target as target_mod
from memlock_guard.measure.mappings import Mapping, Snapshot
from memlock_guard.measure.peak import Sample
from memlock_guard.measure.qemu_text import BarEvent, FlatRange, FlatView, RamBlock

from ..conftest import ROOT
from .builders import domain_xml, hostdevs

DATA = ROOT / "tests" / "data" / "qemu"
KiB = 1024
MiB = 1024 * KiB
SEABIOS_RAM = frozenset({"pc.ram"})


def data(name: str) -> str:
    return (DATA / name).read_text()


def regions(snap: Snapshot) -> list[tuple[str, int]]:
    return [(m.region, m.size) for m in snap.non_ram]


# ----------------------------------------------------------------------- flat views


def test_pre_firmware_layout_seabios_q35():
    # Paused before the first instruction: isa-bios (the pc.bios alias) and pc.rom are
    # mapped next to pc.bios; the VGA window is I/O; guest RAM lacks the 384 KiB hole.
    snap = mappings.snapshot(data("q35-seabios-paused.mtree-f.txt"), SEABIOS_RAM)
    assert regions(snap) == [("pc.rom", 128 * KiB), ("pc.bios", 128 * KiB),
                             ("pc.bios", 256 * KiB)]
    isa_bios = snap.non_ram[1]
    assert (isa_bios.start, isa_bios.offset) == (0xE0000, 0x20000)
    assert snap.non_ram_bytes == 512 * KiB
    assert snap.guest_ram_bytes == 256 * MiB - 384 * KiB


def test_qxl_vram64_maps_the_vram32_alias_and_the_whole_vram64_bar():
    snap = mappings.snapshot(data("q35-qxl-vram64.mtree-f.txt"), SEABIOS_RAM)
    assert sorted(regions(snap)) == sorted([
        ("qxl.vram", 128 * MiB), ("vga.vram", 64 * MiB), ("qxl.vram", 32 * MiB),
        ("qxl.vrom", 8 * KiB), ("pc.bios", 256 * KiB)])
    # The PAM shadow of 0xc0000-0xfffff is pc.ram again (partly write-protected "rom").
    assert any(m.type == "rom" and m.guest_ram for m in snap.mappings)
    assert snap.guest_ram_bytes == 256 * MiB - 128 * KiB  # only the VGA window is a hole
    assert snap.non_ram_bytes == 229640 * KiB


def test_ovmf_pflash_is_romd_and_not_mapped():
    view = qemu_text.memory_flatview(data("q35-ovmf-tcg.mtree-f.txt"))
    flash = [r for r in view.ranges if r.region.startswith("system.flash")]
    assert {r.type for r in flash} == {"romd"}
    assert all(r.accel is None for r in view.ranges)  # TCG: no KVM memory slots
    snap = mappings.snapshot(data("q35-ovmf-tcg.mtree-f.txt"), SEABIOS_RAM)
    # isa-bios copy 128 KiB, pc.rom minus OVMF's 16 KiB of RAM, vga.chain4 64 KiB, vram.
    assert sorted(regions(snap)) == sorted([
        ("vga.vram", 64 * KiB), ("pc.rom", 112 * KiB), ("isa-bios", 128 * KiB),
        ("vga.vram", 16 * MiB)])


def test_seabios_is_told_from_ovmf_before_the_first_instruction():
    assert mappings.looks_like_seabios(
        mappings.snapshot(data("q35-seabios-paused.mtree-f.txt"), SEABIOS_RAM))
    assert not mappings.looks_like_seabios(
        mappings.snapshot(data("q35-ovmf-tcg.mtree-f.txt"), SEABIOS_RAM))
    ovmf_as_bios = Snapshot((Mapping(0xFFE00000, 2 * MiB, "rom", "pc.bios", None, False),))
    assert not mappings.looks_like_seabios(ovmf_as_bios)


def test_post_finished_when_seabios_write_protects_its_shadow():
    assert not mappings.post_finished(
        mappings.snapshot(data("q35-seabios-paused.mtree-f.txt"), SEABIOS_RAM))
    assert mappings.post_finished(
        mappings.snapshot(data("q35-qxl-vram64.mtree-f.txt"), SEABIOS_RAM))


def test_memory_backends_from_info_memdev_are_guest_ram():
    memdevs = qemu_text.parse_memdevs(data("q35-dimm.memdev.txt"))
    assert memdevs == ("memdimm0", "ram-node0")
    text = data("q35-dimm.mtree-f.txt")
    snap = mappings.snapshot(text, qemu_text.guest_ram_regions(memdevs))
    assert regions(snap) == [("vga.vram", 16 * MiB), ("pc.bios", 256 * KiB)]
    assert snap.guest_ram_bytes == 384 * MiB - 128 * KiB
    # Without the backend list a NUMA domain's RAM would be taken for non-RAM.
    assert mappings.snapshot(text, SEABIOS_RAM).non_ram_bytes > 384 * MiB


def test_flat_view_lines_names_offsets_and_accelerator():
    text = ("FlatView #0\n AS \"memory\", root: system\n AS \"cpu-memory-0\", root: system\n"
            " Root memory region: system\n"
            "  0000000000000000-000000000009ffff (prio 0, ram): pc.ram KVM\n"
            "  00000000000e0000-00000000000fffff (prio 1, rom): pc.bios @0000000000020000 KVM\n"
            "  00000000fe000000-00000000fe000fff (prio 0, ramd): 0000:01:00.0 BAR 0 mmaps[0]\n"
            "  00000000fe001000-00000000fe0017ff (prio 0, nv-ram): nvdimm0\n")
    (view,) = qemu_text.parse_flatviews(text)
    assert view.address_spaces == ("memory", "cpu-memory-0") and view.root == "system"
    assert [(r.region, r.offset, r.accel, r.type) for r in view.ranges] == [
        ("pc.ram", None, "KVM", "ram"), ("pc.bios", 0x20000, "KVM", "rom"),
        ("0000:01:00.0 BAR 0 mmaps[0]", None, None, "ramd"), ("nvdimm0", None, None, "nv-ram")]


def test_vfio_listener_rules_types_bit63_and_page_trimming():
    def r(start: int, end: int, typ: str, name: str = "x") -> FlatRange:
        return FlatRange(start, end, 0, typ, name, None)

    view = FlatView(("memory",), "system", (
        r(0x1000, 0x2fff, "ram"), r(0x3000, 0x3fff, "i/o"), r(0x4000, 0x4fff, "romd"),
        r(0x5000, 0x5fff, "ramd"), r(0x6800, 0x8fff, "rom"),  # trimmed to 0x7000-0x8fff
        r(0x9000, 0x97ff, "ram"),  # less than a page: nothing left
        r((1 << 63) | 0x10000, (1 << 63) | 0x1ffff, "ram"),  # 64-bit BAR being sized
    ))
    assert [(m.start, m.size, m.type) for m in mappings.dma_mappings(view, frozenset())] == [
        (0x1000, 0x2000, "ram"), (0x7000, 0x2000, "rom")]


def test_no_memory_address_space_is_an_error():
    with pytest.raises(qemu_text.MeasureError, match="memory"):
        qemu_text.memory_flatview("FlatView #0\n AS \"I/O\", root: io\n")


def test_ramblocks():
    blocks = {b.name: b for b in qemu_text.parse_ramblocks(data("q35-qxl-vram64.ramblock.txt"))}
    assert blocks["0000:00:01.0/qxl.vram"].used == 128 * MiB
    assert blocks["0000:00:01.0/qxl.vrom"].total == 8 * KiB
    acpi = blocks["/rom@etc/acpi/tables"]  # fw_cfg blob: a RAM block, never mapped
    assert (acpi.used, acpi.total, acpi.page_size) == (128 * KiB, 2 * MiB, "4 KiB")
    assert "Block Name" not in blocks


# ------------------------------------------------------------------------ the trace


def test_bar_trace_from_the_domain_log():
    events = qemu_text.parse_bar_trace(data("pc-seabios-vga-virtionet.qemu.log"))
    assert len(events) == 13  # libvirt's own lines and QEMU warnings are skipped
    roms = [(e.device, e.bdf, e.added, e.size) for e in events if e.is_rom]
    assert roms == [("VGA", "00:02.0", True, 64 * KiB), ("VGA", "00:02.0", False, 64 * KiB),
                    ("virtio-net-pci", "00:03.0", True, 256 * KiB),
                    ("virtio-net-pci", "00:03.0", False, 256 * KiB)]
    assert events[0].time == pytest.approx(1795614726.191697)
    vga_rom, net_rom = [b for b in peak.bar_intervals(events) if b.is_rom]
    assert vga_rom.end is not None and net_rom.end is not None
    assert 0.001 < vga_rom.end - vga_rom.start < 0.025  # mapped for ~11 ms
    assert vga_rom.end < net_rom.start


def test_ovmf_trace_rom_bars_are_never_mapped_together():
    bars = peak.bar_intervals(qemu_text.parse_bar_trace(data("q35-ovmf-tcg.qemu.log")))
    roms = [b for b in bars if b.is_rom]
    assert [(b.device, b.size) for b in roms] == [("VGA", 64 * KiB),
                                                  ("virtio-net-pci", 256 * KiB)]
    assert roms[0].end is not None and roms[0].end <= roms[1].start


def ev(t: float, added: bool, bar: int, addr: int, size: int, device: str = "dev",
       bdf: str = "00:02.0") -> BarEvent:
    return BarEvent(t, added, device, bdf, bar, addr, size)


def test_bar_intervals_pairing():
    bars = peak.bar_intervals([
        ev(1.0, True, 0, 0x1000, 0x1000), ev(2.0, False, 0, 0x1000, 0x1000),
        ev(3.0, True, 0, 0x1000, 0x1000), ev(4.0, True, 0, 0x8000, 0x1000),  # moved
        ev(5.0, True, 6, 0x9000, 0x1000, bdf="00:03.0"),  # never unmapped
        BarEvent(None, True, "untimed", "00:04.0", 6, 0, 0x1000),
    ])
    assert [(b.bar, b.address, b.start, b.end) for b in bars] == [
        (0, 0x1000, 1.0, 2.0), (0, 0x1000, 3.0, 4.0), (0, 0x8000, 4.0, None),
        (6, 0x9000, 5.0, None)]


# ------------------------------------------------------------------------ boot peak

BIOS = Mapping(0xFFFC0000, 256 * KiB, "rom", "pc.bios", None, False)
VRAM = Mapping(0xFD000000, 16 * MiB, "ram", "vga.vram", None, False)


def sample(t: float, *maps: Mapping) -> Sample:
    return Sample(t, t + 0.002, Snapshot(maps))


def test_a_rom_bar_between_samples_adds_to_the_layout_around_it():
    samples = [sample(0.0, BIOS, VRAM), sample(1.0, BIOS, VRAM)]
    bars = peak.bar_intervals([ev(0.5, True, 6, 0xFEB80000, 256 * KiB, "virtio-net-pci"),
                                  ev(0.52, False, 6, 0xFEB80000, 256 * KiB, "virtio-net-pci")])
    got = peak.boot_peak(samples, bars)
    assert got.non_ram_bytes == (256 + 16384 + 256) * KiB
    assert ("ROM BAR virtio-net-pci 00:02.0", 256 * KiB) in got.parts


def test_rom_bars_one_after_the_other_count_once():
    samples = [sample(0.0, BIOS), sample(2.0, BIOS)]
    bars = peak.bar_intervals([
        ev(0.5, True, 6, 0xFEBC0000, 64 * KiB, "VGA", "00:01.0"),
        ev(0.51, False, 6, 0xFEBC0000, 64 * KiB, "VGA", "00:01.0"),
        ev(1.0, True, 6, 0xFEB80000, 256 * KiB, "e1000e", "00:03.0"),
        ev(1.02, False, 6, 0xFEB80000, 256 * KiB, "e1000e", "00:03.0"),
    ])
    assert peak.boot_peak(samples, bars).non_ram_bytes == (256 + 256) * KiB


def test_a_rom_caught_by_a_sample_is_not_counted_twice():
    rom = Mapping(0xFEB80000, 256 * KiB, "rom", "virtio-net-pci.rom", None, False)
    samples = [sample(0.0, BIOS), sample(0.505, BIOS, rom), sample(1.0, BIOS)]
    bars = peak.bar_intervals([ev(0.5, True, 6, 0xFEB80000, 256 * KiB),
                                  ev(0.52, False, 6, 0xFEB80000, 256 * KiB)])
    assert peak.boot_peak(samples, bars).non_ram_bytes == 512 * KiB


def test_ovmf_style_flicker_a_ram_bar_and_a_rom_bar_decoded_together_between_samples():
    # OVMF turns a device's decoding on, reads its ROM and turns it off within 1 ms;
    # the RAM size of BAR0 is learned from a later sample that shows it mapped.
    vga = dict(device="VGA", bdf="00:01.0")
    samples = [sample(0.0, BIOS), sample(0.1, BIOS), sample(2.0, BIOS, VRAM)]
    bars = peak.bar_intervals([
        ev(0.0500, True, 0, VRAM.start, VRAM.size, **vga),
        ev(0.0501, True, 2, 0xFEBD0000, 0x1000, **vga),  # mmio: I/O, learned as 0 bytes
        ev(0.0502, True, 6, 0xC1800000, 64 * KiB, **vga),
        ev(0.0510, False, 0, VRAM.start, VRAM.size, **vga),
        ev(0.0511, False, 2, 0xFEBD0000, 0x1000, **vga),
        ev(0.0512, False, 6, 0xC1800000, 64 * KiB, **vga),
        ev(1.0, True, 0, VRAM.start, VRAM.size, **vga),
        ev(1.0, True, 2, 0xFEBD0000, 0x1000, **vga),
    ])
    ram, notes = peak.bar_ram_bytes(bars, samples)
    assert ram == {("00:01.0", 0): 16 * MiB, ("00:01.0", 2): 0, ("00:01.0", 6): 64 * KiB}
    assert notes == ()
    got = peak.boot_peak(samples, bars)
    assert got.non_ram_bytes == (256 + 16384 + 64) * KiB
    assert got.at == pytest.approx(0.0502)


def test_a_passthrough_rom_bar_is_io_unless_a_romfile_backs_it():
    samples = [sample(0.0, BIOS), sample(1.0, BIOS)]
    bars = peak.bar_intervals([ev(0.5, True, 6, 0xFE000000, 1 * MiB, "vfio-pci"),
                                  ev(0.6, False, 6, 0xFE000000, 1 * MiB, "vfio-pci")])
    assert peak.boot_peak(samples, bars).non_ram_bytes == 256 * KiB
    romfile = RamBlock("0000:00:05.0/vfio-pci.rom", "4 KiB", 0, 1 * MiB, 1 * MiB)
    assert peak.boot_peak(samples, bars, [romfile]).non_ram_bytes == (256 + 1024) * KiB


def test_a_bar_no_sample_saw_counts_when_a_device_ram_block_has_its_size():
    samples = [sample(0.0, BIOS), sample(1.0, BIOS)]
    bars = peak.bar_intervals([ev(0.5, True, 0, 0xC0000000, 16 * MiB, "VGA"),
                                  ev(0.5005, False, 0, 0xC0000000, 16 * MiB, "VGA")])
    assert peak.boot_peak(samples, bars).non_ram_bytes == 256 * KiB
    blocks = [RamBlock("0000:00:01.0/vga.vram", "4 KiB", 0, 16 * MiB, 16 * MiB),
              RamBlock("/rom@etc/acpi/tables", "4 KiB", 0, 128 * KiB, 2 * MiB)]
    got = peak.boot_peak(samples, bars, blocks)
    assert got.non_ram_bytes == (256 + 16384) * KiB
    assert len(got.notes) == 1 and "never sampled" in got.notes[0]


def test_without_a_trace_the_peak_is_the_largest_sample():
    samples = [sample(0.0, BIOS, VRAM), sample(1.0, BIOS)]
    assert peak.boot_peak(samples, ()).non_ram_bytes == (256 + 16384) * KiB


# ------------------------------------------------------------ estimate vs measured


def test_estimated_non_ram_is_per_container_and_leaves_ram_out(pinned_host):
    def est(xml: bytes) -> tuple[int, int]:
        return compare.estimated_non_ram(build_ledger(parse_domain(xml), pinned_host))

    devices = ("<video><model type='vga'/></video>"
               "<interface type='user'><model type='virtio'/></interface>")
    plain = est(domain_xml(devices))
    # pc.bios 256 + vram 16 MiB + VGA window alias 128 always; the larger of the
    # pre-firmware window (isa-bios 128 + pc.rom 128) and the largest ROM BAR (256).
    assert plain == ((256 + 16384 + 128 + 256) * KiB, (256 + 16384 + 128) * KiB)
    three_viommu = est(domain_xml(devices + hostdevs(3) + "<iommu model='intel'/>"))
    assert three_viommu == plain


def test_tolerance():
    assert compare.tolerance(0) == 2 * MiB
    assert compare.tolerance(1000 * MiB) == 10 * MiB


# ------------------------------------------------------------------------ the verb


class FakeTarget:
    """A domain whose monitor answers from captured text."""

    def __init__(self, *, active: bool, flatviews: list[str], log: Path | None = None,
                 trace: str = "") -> None:
        self.name = "vm1"
        self.log_path = str(log) if log else None
        self.active = active
        self.flatviews = flatviews
        self.trace = trace
        self.calls: list[str] = []

    def hmp(self, command: str) -> str:
        self.calls.append(command)
        if command == "info mtree -f":
            time.sleep(0.002)  # a real monitor round trip takes about this long
            return self.flatviews.pop(0) if len(self.flatviews) > 1 else self.flatviews[0]
        if command == "info memdev":
            return data("q35-dimm.memdev.txt")
        if command == "info ramblock":
            return data("q35-dimm.ramblock.txt")
        if command.startswith("trace-event"):
            return ""
        raise AssertionError(command)

    def xml(self) -> str:
        return data("q35-dimm.domain.xml")

    def is_active(self) -> bool:
        return self.active

    def is_persistent(self) -> bool:
        return True

    def start_paused(self) -> None:
        self.calls.append("start")
        self.active = True

    def resume(self) -> None:
        self.calls.append("resume")
        if self.log_path:
            with open(self.log_path, "a") as f:
                f.write(self.trace)

    def destroy(self) -> None:
        self.calls.append("destroy")
        self.active = False

    def state(self) -> tuple[str, str]:
        return ("running", "unpaused") if self.active else ("shut off", "destroyed")


def test_measure_now_json(monkeypatch, capsys, pinned_host_file):
    target = FakeTarget(active=True, flatviews=[data("q35-dimm.mtree-f.txt")])
    monkeypatch.setattr(target_mod, "open_target", lambda name, uri=None: target)
    code = main(["measure", "vm1", "--format", "json", "--host-facts", str(pinned_host_file)])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["what"] == "now"
    assert out["measured"]["non_ram_bytes"] == (16384 + 256) * KiB
    assert out["measured"]["guest_ram_bytes"] == 384 * MiB - 128 * KiB
    assert out["estimate"]["non_ram_strict_bytes"] == (16384 + 256 + 128 + 256) * KiB
    assert out["difference_bytes"] == 384 * KiB and out["within_tolerance"] is True
    assert "destroy" not in target.calls


def test_measure_now_refuses_a_shut_off_domain(monkeypatch, capsys):
    target = FakeTarget(active=False, flatviews=[""])
    monkeypatch.setattr(target_mod, "open_target", lambda name, uri=None: target)
    assert main(["measure", "vm1"]) == 2
    assert "not running" in capsys.readouterr().err


def test_measure_boot_follows_the_boot_and_destroys(monkeypatch, capsys, tmp_path,
                                                    pinned_host_file):
    log = tmp_path / "vm1.log"
    log.write_text("2026-11-25 13:52:05.228+0000: starting up libvirt\n")
    # The trace of a real SeaBIOS boot (VGA 64 KiB ROM, virtio-net 256 KiB ROM), moved
    # to now and five times faster, so that it falls among the fake's samples.
    events = qemu_text.parse_bar_trace(data("pc-seabios-vga-virtionet.qemu.log"))
    first = min(e.time or 0 for e in events)
    now = time.time() + 0.05
    trace = "".join(
        f"1@{now + ((e.time or 0) - first) / 5:.6f}:pci_update_mappings_"
        f"{'add' if e.added else 'del'} {e.device} {e.bdf} {e.bar},{e.address:#x}+{e.size:#x}\n"
        for e in events)
    paused = data("q35-seabios-paused.mtree-f.txt")
    running = data("q35-dimm.mtree-f.txt")
    target = FakeTarget(active=False, flatviews=[paused, running], log=log, trace=trace)
    monkeypatch.setattr(target_mod, "open_target", lambda name, uri=None: target)
    code = main(["measure", "vm1", "--boot", "--settle", "0.6", "--timeout", "5",
                 "--host-facts", str(pinned_host_file)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert target.calls[0] == "start" and target.calls[-1] == "destroy"
    assert "trace-event pci_update_mappings_add on" in target.calls
    assert target.calls.index("resume") > target.calls.index("trace-event "
                                                             "pci_update_mappings_del on")
    # pc.bios + vram in the running layout plus the 256 KiB ROM BAR between samples.
    assert "measured non-RAM:               16896 KiB" in out
    assert "virtio-net-pci 00:03.0" in out


def test_measure_boot_refuses_a_running_domain(monkeypatch, capsys):
    target = FakeTarget(active=True, flatviews=[""])
    monkeypatch.setattr(target_mod, "open_target", lambda name, uri=None: target)
    assert main(["measure", "vm1", "--boot"]) == 2
    assert "shut it down first" in capsys.readouterr().err
    assert target.calls == []


def test_measure_boot_destroys_even_when_the_monitor_fails(tmp_path):
    class Broken(FakeTarget):
        def hmp(self, command: str) -> str:
            if command == "info mtree -f":
                raise qemu_text.MeasureError("monitor went away")
            return super().hmp(command)

    target = Broken(active=False, flatviews=[""], log=tmp_path / "x.log")
    with pytest.raises(qemu_text.MeasureError, match="went away"):
        boot.measure_boot(target, settle=0.1, timeout=1)
    assert target.calls[-1] == "destroy"


def test_help_text_mentions_destroy(capsys):
    with pytest.raises(SystemExit):
        main(["measure", "--help"])
    out = capsys.readouterr().out
    assert "--boot" in out and "DESTROYS" in out and "exit status" in out


def test_settle_and_timeout_must_be_positive(capsys):
    assert main(["measure", "vm1", "--boot", "--settle", "0"]) == 2
    assert "--settle" in capsys.readouterr().err
