"""measure --zero-pages, piece by piece, on what QEMU 7.2 and Linux 6.18 really printed
(tests/data/qemu/README.md): info pci, the traces, smaps, and pagemap/kpageflags bytes
read from a running QEMU; plus pagemap read for real, in this process."""

from __future__ import annotations

import json
import mmap
import os
from typing import Any

import pytest
from memlock_guard.accounting.engine import build_ledger
from memlock_guard.domain import parse_domain
from memlock_guard.measure import compare, locate, pagemap, pages, pci, qemu_text
from memlock_guard.measure.mappings import Mapping, snapshot
from memlock_guard.measure.pagemap import PAGE, PageCount

from ..conftest import IN_CI, ROOT

DATA = ROOT / "tests" / "data" / "qemu"
KiB = 1024
TAIL = "pc-seabios-e1000-tailread"


def data(name: str) -> str:
    return (DATA / name).read_text()


def captured(block: str) -> tuple[tuple[int, ...], dict[int, int]]:
    d = json.loads(data(f"{TAIL}.pagemap.json"))[block]
    return (pagemap.entries(bytes.fromhex(d["pagemap"])),
            {int(k): v for k, v in d["kpageflags"].items()})


# ------------------------------------------------------------------------------ info pci


def test_device_paths_follow_the_bridges_the_firmware_numbered():
    devs = pci.parse_info_pci(data("q35-qxl-two.pci.txt"))
    by_id = {d.qemu_id: d for d in devs if d.qemu_id}
    # Exactly the prefixes of `info ramblock` (q35-qxl-two.ramblock.txt).
    assert by_id["video0"].path == "0000:00:01.0"
    assert by_id["video1"].path == "0000:00:02.0:00.0:01.0"
    assert by_id["video1"].bdf == "02:01.0"
    assert [(b.index, b.start, b.size) for b in by_id["video0"].bars] == [
        (0, 0xF4000000, 64 << 20), (1, 0xF8000000, 64 << 20), (2, 0xFC610000, 8 * KiB)]
    blocks = {b.name for b in qemu_text.parse_ramblocks(data("q35-qxl-two.ramblock.txt"))}
    assert f"{by_id['video1'].path}/qxl.vrom" in blocks
    hit = pci.bar_holding(devs, 0xEC000000, 8 * KiB)
    assert hit is not None and (hit[0].qemu_id, hit[1].index) == ("video1", 2)
    assert pci.bar_holding(devs, 0xA0000, 4096) is None


def test_before_the_firmware_ran_bridged_devices_are_not_listed_yet():
    # info pci walks the buses the guest numbered: until the firmware programs the
    # bridges (secondary bus 0), what sits behind them is not shown. Paths are read at
    # the end of a boot.
    devs = {d.qemu_id: d for d in pci.parse_info_pci(data("q35-qxl-two.paused.pci.txt"))}
    assert devs["video0"].path == "0000:00:01.0"
    assert devs["pci.1"].secondary_bus == 0 and "video1" not in devs


def test_block_device_path():
    assert pci.block_device_path("0000:00:02.0:00.0/virtio-net-pci.rom") == "0000:00:02.0:00.0"
    assert pci.block_device_path("pc.bios") is None
    assert pci.block_device_path("/rom@etc/table-loader") is None


# ------------------------------------------------------------------------ monitor text


def test_gpa2hva_answers():
    assert qemu_text.parse_gpa2hva(
        "Host virtual address for 0xe0000 (pc.bios) is 0x7f6d50620000\r\n") == \
        ("pc.bios", 0x7F6D50620000)
    assert qemu_text.parse_gpa2hva("Host virtual address for 0xfeb80000 "
                                   "(virtio-net-pci.rom) is 0x7efc14c00000") == \
        ("virtio-net-pci.rom", 0x7EFC14C00000)
    assert qemu_text.parse_gpa2hva("Memory at address 0xa0000 is not RAM") is None
    assert qemu_text.parse_gpa2hva("No memory is mapped at address 0xfeb80000") is None


def test_kvm_slots_of_the_rom_bars():
    slots = qemu_text.parse_kvm_slots(data(f"{TAIL}.trace.log"))
    roms = [s for s in slots if s.gpa in (0xFEBC0000, 0xFEBD0000)]
    assert [(s.flags, s.size, s.ua) for s in roms] == [
        (2, 0x10000, 0x7F81AA000000), (2, 0x10000, 0x7F81AB400000)]
    assert all(s.size for s in slots)  # the removals (size=0x0) are left out


def test_allocation_trace_pairs_offsets_with_host_addresses():
    text = data("q35-ovmf-tcg-alloc.qemu.log")
    allocs = qemu_text.parse_alloc_trace(text, 5878)
    ramblocks = qemu_text.parse_ramblocks(data("q35-ovmf-tcg-alloc.ramblock.txt"))
    blocks = {b.offset: b for b in ramblocks}
    assert allocs[0] == (256 << 20, 0x7F3983E00000)  # pc.ram: the first block, untraced offset
    assert set(allocs) == set(blocks)
    assert all(blocks[o].total == size for o, (size, _) in allocs.items())
    assert blocks[0x11300000].name == "0000:00:01.0/vga.rom"
    assert allocs[0x11300000] == (0x10000, 0x7F3980E00000)
    assert qemu_text.parse_alloc_trace(text, 4242) == {}  # another QEMU's lines


def test_a_block_qemu_did_not_allocate_anonymously_is_skipped():
    text = ("1@1.0:qemu_anon_ram_alloc size 4096 ptr 0x1000\n"
            "1@1.1:find_ram_offset size: 0x2000 @ 0x200000\n"  # a memfd backend: no alloc
            "1@1.2:find_ram_offset size: 0x3000 @ 0x400000\n"
            "1@1.3:qemu_anon_ram_alloc size 12288 ptr 0x9000\n")
    assert qemu_text.parse_alloc_trace(text, 1) == {0: (4096, 0x1000), 0x400000: (12288, 0x9000)}


# ------------------------------------------------------------------------------ pagemap


def test_captured_pages_of_a_rom_the_firmware_read_past_its_file():
    pm, flags = captured("e1000.rom")
    c = pagemap.count(pm, flags.get)
    # 36 KiB of file written; the 28 KiB tail read by SeaBIOS's copy_rom: the zero page.
    assert (c.written, c.zero_page, c.not_present, c.unknown) == (9, 7, 0, 0)
    assert c.zero_fill == 7 and c.map == "W9 Z7" and c.pfns_visible is True
    assert flags[pagemap.pfn(pm[-1])] & pagemap.KPF_ZERO_PAGE


def test_captured_pages_of_a_rom_nobody_read_past_its_file():
    pm, flags = captured("vga.rom")
    c = pagemap.count(pm, flags.get)
    assert (c.written, c.not_present, c.map) == (10, 6, "W10 -6")


def test_without_pfns_a_shared_present_page_is_unknown_never_guessed():
    pm, _ = captured("e1000.rom")
    hidden = [e & ~pagemap.PM_PFN for e in pm]  # what a reader without CAP_SYS_ADMIN gets
    c = pagemap.count(hidden, lambda pfn: None)
    assert (c.written, c.unknown, c.zero_fill) == (9, 7, 0)  # written pages are exclusive
    assert c.pfns_visible is False and c.map == "W9 ?7"


@pytest.mark.parametrize(("entry", "flags", "state"), [
    (0, None, "-"),
    (pagemap.PM_SWAP | 1234, None, "S"),
    (pagemap.PM_PRESENT | 0x3B36, 0x101000000, "Z"),  # the zero page (kpageflags as read)
    (pagemap.PM_PRESENT | pagemap.PM_FILE | 0x400, pagemap.KPF_ZERO_PAGE | pagemap.KPF_THP, "Z"),
    (pagemap.PM_PRESENT | pagemap.PM_EXCLUSIVE | 0x77, 0x400005828, "W"),
    (pagemap.PM_PRESENT | 0x77, pagemap.KPF_KSM, "W"),
    (pagemap.PM_PRESENT | 0x77, pagemap.KPF_NOPAGE, "?"),
    (pagemap.PM_PRESENT | 0x77, None, "?"),  # kpageflags unreadable, not exclusive
    (pagemap.PM_PRESENT | pagemap.PM_EXCLUSIVE, None, "W"),
    (pagemap.PM_PRESENT, None, "?"),
])
def test_classify(entry, flags, state):
    assert pagemap.classify(entry, flags) == state


def test_thp_and_ksm_are_counted_among_written_pages():
    pm = [pagemap.PM_PRESENT | 10, pagemap.PM_PRESENT | 11, 0]
    c = pagemap.count(pm, {10: pagemap.KPF_THP, 11: pagemap.KPF_KSM}.get)
    assert (c.written, c.thp, c.ksm, c.not_present) == (2, 1, 1, 1)


def test_page_map_runs_are_capped():
    assert pagemap.rle("WW--WZ") == "W2 -2 W1 Z1"
    assert pagemap.rle("W-" * 100).endswith(" …")


def test_ram_block_vmas_from_smaps():
    vmas = dict(pagemap.ram_block_vmas(data(f"{TAIL}.smaps.txt")))
    # The e1000 ROM BAR the KVM slot trace placed, and vga.rom.
    assert vmas[0x7F81AB400000] == 0x10000 and vmas[0x7F81AA000000] == 0x10000
    assert sorted(vmas.values()).count(0x10000) == 3  # ... and /rom@etc/table-loader
    assert 256 << 20 in vmas.values()  # pc.ram


def _root_or_fail() -> None:
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("reading PFNs from pagemap needs root (CAP_SYS_ADMIN)")
        pytest.skip("needs root to see PFNs")


def test_pagemap_of_this_process_read_for_real():
    _root_or_fail()
    buf = mmap.mmap(-1, 8 * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    import ctypes

    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    try:
        _ = buf[0]  # a read fault: the shared zero page
        buf[PAGE] = 1  # a write: a page of our own
        c = pagemap.scan(os.getpid(), addr, 4 * PAGE)
        assert c.map == "Z1 W1 -2" and c.pfns_visible is True
        assert c.zero_fill == 3 and c.written == 1
    finally:
        del addr
        buf.close()


def test_pagemap_of_a_process_that_is_gone():
    with pytest.raises(pagemap.PagemapError):
        pagemap.read_pagemap(2**22 + 12345, 0x1000, PAGE)


# ------------------------------------------------------------------------------ locate


def _locator(name: str = TAIL) -> tuple[locate.Locator, tuple[pci.PciDevice, ...]]:
    blocks = qemu_text.parse_ramblocks(data(f"{name}.ramblock.txt"))
    return locate.Locator(blocks), pci.parse_info_pci(data(f"{name}.pci.txt"))


def test_rom_bars_are_found_through_the_kvm_slot_trace():
    loc, devs = _locator()
    text = data(f"{TAIL}.trace.log")
    loc.by_kvm_trace(qemu_text.parse_bar_trace(text), qemu_text.parse_kvm_slots(text), devs)
    assert {n: (f.hva, f.method) for n, f in loc.found.items()} == {
        "0000:00:02.0/vga.rom": (0x7F81AA000000, "kvm-trace"),
        "0000:00:03.0/e1000.rom": (0x7F81AB400000, "kvm-trace")}


def test_gpa2hva_of_what_is_mapped_now_gives_the_blocks_base():
    loc, devs = _locator()
    snap = snapshot(data(f"{TAIL}.mtree-f.txt"), frozenset({"pc.ram"}))
    bases = {"pc.ram": 0x7F81ABE00000, "vga.vram": 0x7F81A9E00000, "pc.bios": 0x7F81C0600000}

    def ask(gpa: int) -> str:
        m = next(x for x in snap.mappings if x.start <= gpa <= x.end)
        hva = bases[m.region] + (m.offset or 0) + gpa - m.start
        return f"Host virtual address for {gpa:#x} ({m.region}) is {hva:#x}"

    loc.by_gpa2hva(ask, snap.mappings, devs, "now")
    assert loc.found["pc.bios"].hva == 0x7F81C0600000
    assert loc.found["0000:00:02.0/vga.vram"].hva == 0x7F81A9E00000
    assert loc.found["pc.ram"].hva == 0x7F81ABE00000
    assert loc.bars["0000:00:02.0/vga.vram"] == {"video0/bar0"}


def test_a_non_contiguous_answer_is_not_used():
    loc, devs = _locator()
    snap = snapshot(data(f"{TAIL}.mtree-f.txt"), frozenset({"pc.ram"}))
    bios = [m for m in snap.mappings if m.region == "pc.bios"]
    loc.by_gpa2hva(lambda a: f"Host virtual address for {a:#x} (pc.bios) is 0x1000", bios,
                   devs, "now")
    assert "pc.bios" not in loc.found and "not contiguous" in loc.notes[0]


def test_two_qxl_devices_are_told_apart_by_their_bars():
    loc, devs = _locator("q35-qxl-two")
    # Both devices' qxl.vrom, at their BAR2 addresses of q35-qxl-two.pci.txt.
    maps = [Mapping(0xFC610000, 8 * KiB, "rom", "qxl.vrom", None, False),
            Mapping(0xEC000000, 8 * KiB, "rom", "qxl.vrom", None, False)]
    hva = {0xFC610000: 0x7000_0000_0000, 0xEC000000: 0x7100_0000_0000}

    def ask(gpa: int) -> str:
        base = max(a for a in hva if a <= gpa)
        return f"Host virtual address for {gpa:#x} (qxl.vrom) is {hva[base] + gpa - base:#x}"

    loc.by_gpa2hva(ask, maps, devs, "now")
    assert loc.found["0000:00:01.0/qxl.vrom"].hva == 0x7000_0000_0000
    assert loc.found["0000:00:02.0:00.0:01.0/qxl.vrom"].hva == 0x7100_0000_0000
    assert loc.bars["0000:00:02.0:00.0:01.0/qxl.vrom"] == {"video1/bar2"}


def test_the_allocation_trace_finds_what_tcg_never_traces():
    loc = locate.Locator(qemu_text.parse_ramblocks(data("q35-ovmf-tcg-alloc.ramblock.txt")))
    loc.by_alloc_trace(qemu_text.parse_alloc_trace(data("q35-ovmf-tcg-alloc.qemu.log"), 5878))
    assert loc.found["0000:00:01.0/vga.rom"].hva == 0x7F3980E00000
    assert loc.found["0000:00:02.0:00.0/virtio-net-pci.rom"].hva == 0x7F3982200000
    assert loc.found["isa-bios"].method == "alloc-trace"


def test_a_size_two_blocks_share_resolves_nothing():
    loc, _ = _locator()
    vmas = pagemap.ram_block_vmas(data(f"{TAIL}.smaps.txt"))
    wanted = ["0000:00:02.0/vga.rom", "0000:00:03.0/e1000.rom", "pc.rom"]
    loc.by_vma_size(vmas, wanted)
    assert not any(w in loc.found for w in wanted[:2])  # three 64 KiB blocks, three VMAs
    assert loc.found["pc.rom"].method == "smaps-size"  # the only 128 KiB one
    why = loc.reason("0000:00:02.0/vga.rom", boot=False, kvm=False)
    assert "shared with" in why and "/rom@etc/table-loader" in why and "--boot" in why


# ------------------------------------------------------------------------------ the join


LIVE_XML = """<domain type='kvm' id='3'><name>vm</name><memory unit='MiB'>256</memory>
<os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type></os><devices>
<video><model type='vga' vram='16384' heads='1' primary='yes'/><alias name='video0'/></video>
<interface type='user'><model type='e1000'/><rom file='/x/tail.rom'/><alias name='net0'/>
</interface></devices></domain>"""


def _measurement(**over: Any) -> pages.PageMeasurement:
    def region(name: str, size: int, keys: tuple[str, ...], counts: PageCount | None,
               **kw: Any) -> pages.RegionPages:
        return pages.RegionPages(name, True, size, keys, 0x7000, "kvm-trace", counts, **kw)

    def pc(w: int, n: int, z: int = 0, u: int = 0, m: str = "") -> PageCount:
        return PageCount(w + n + z + u, w, n, z, u, map=m)

    regions = [
        region("pc.bios", 256 * KiB, ("pc.bios",), pc(64, 0)),
        region(pages.ISA_BIOS_ALIAS, 128 * KiB, ("isa-bios",), pc(32, 0)),
        region("pc.rom", 128 * KiB, ("pc.rom",), pc(0, 32)),
        region("0000:00:02.0/vga.rom", 64 * KiB, ("video0/bar6",), pc(10, 6)),
        region("0000:00:03.0/e1000.rom", 64 * KiB, ("net0/bar6",), pc(9, 0, 7, m="W9 Z7")),
        pages.RegionPages("0000:00:02.0/vga.vram", False, 16 << 20, ("video0/bar0",),
                          pages=pc(512, 3584)),
    ]
    regions = [over.get(r.region, r) for r in regions]
    facts = pages.PageFacts("6.1.0", "madvise", "0", "0", True)
    return pages.PageMeasurement(tuple(r for r in regions if r is not None), facts, ())


def _ledger(pinned_host):
    host = pinned_host._replace(rom_files=(*pinned_host.rom_files, ("/x/tail.rom", 33792)))
    return build_ledger(parse_domain(LIVE_XML.encode()), host)


def test_every_read_only_region_joins_its_ledger_items(pinned_host):
    zf = compare.zero_fill(_measurement(), _ledger(pinned_host).items)
    rows = {r.region: r for r in zf.rows}
    assert set(rows) == {"pc.bios", pages.ISA_BIOS_ALIAS, "pc.rom", "0000:00:02.0/vga.rom",
                         "0000:00:03.0/e1000.rom"}
    assert all(r.agrees for r in zf.rows), zf.rows
    e1000 = rows["0000:00:03.0/e1000.rom"]
    assert (e1000.zero_fill, e1000.zero_page, e1000.estimated_zero_fill) == (28 * KiB,) * 3
    assert e1000.estimated_bytes == 64 * KiB and len(e1000.ledger_items) == 2
    assert [r.region for r in zf.read_write] == ["0000:00:02.0/vga.vram"]
    t = zf.totals()
    assert t["zero_fill_bytes"] == t["estimated_zero_fill_bytes"] == (128 + 24 + 28) * KiB
    assert t["unresolved"] == 0 and t["regions"] == 5


def test_a_ledger_that_forgives_written_pages_is_caught(pinned_host):
    written = pages.RegionPages("0000:00:02.0/vga.rom", True, 64 * KiB, ("video0/bar6",),
                                0x7000, "kvm-trace", PageCount(16, 16, 0, 0, 0))
    zf = compare.zero_fill(_measurement(**{written.region: written}), _ledger(pinned_host).items)
    (row,) = [r for r in zf.rows if r.region == written.region]
    assert row.difference == -24 * KiB and row.agrees is False and row.forgives_written


def test_unknown_pages_make_the_comparison_inconclusive_not_wrong(pinned_host):
    hidden = pages.RegionPages("0000:00:03.0/e1000.rom", True, 64 * KiB, ("net0/bar6",),
                               0x7000, "kvm-trace", PageCount(16, 9, 0, 0, 7))
    zf = compare.zero_fill(_measurement(**{hidden.region: hidden}), _ledger(pinned_host).items)
    (row,) = [r for r in zf.rows if r.region == hidden.region]
    assert row.agrees is None and not row.forgives_written


def test_unresolved_and_missing_regions_say_so(pinned_host):
    gone = pages.RegionPages("0000:00:02.0/vga.rom", True, 64 * KiB, ("video0/bar6",),
                             unresolved="not mapped now; ...")
    zf = compare.zero_fill(_measurement(**{gone.region: gone, "pc.rom": None}),
                           _ledger(pinned_host).items)
    rows = {r.mapping: r for r in zf.rows}
    assert rows["video0/bar6"].written is None and rows["video0/bar6"].agrees is None
    assert rows["video0/bar6"].estimated_zero_fill == 24 * KiB
    assert rows["pc.rom"].region is None and rows["pc.rom"].unresolved and \
        rows["pc.rom"].estimated_zero_fill == 128 * KiB
    assert zf.totals()["unresolved"] == 2


def test_items_next_to_what_is_mapped_now(pinned_host):
    snap = snapshot(data(f"{TAIL}.mtree-f.txt"), frozenset({"pc.ram"}))
    devs = pci.parse_info_pci(data(f"{TAIL}.pci.txt"))
    mapped, stray = compare.mapped_now(snap, devs)
    assert mapped == {"pc.bios": 256 * KiB, "video0/bar0": 16 << 20} and stray == []
    rows = compare.item_rows(_ledger(pinned_host).items, mapped, snap.guest_ram_bytes,
                             _measurement())
    got = {r.item.source: (r.mapped_now, r.measured, r.measured_what) for r in rows}
    assert got["pc.bios (bios-256k.bin)"] == (256 * KiB, 256 * KiB, "written")
    assert got["pc.rom (option ROM space, never written)"] == (0, 128 * KiB, "zero-fill")
    assert got["video video0 VGA vram"] == (16 << 20, 2 << 20, "populated")
    tail = "interface net0 e1000 ROM BAR tail.rom (never-written tail)"
    assert got[tail] == (None, 28 * KiB, "zero-fill")  # the mapping's bytes: on the row above
    assert got["interface net0 e1000 ROM BAR tail.rom"] == (0, 36 * KiB, "written")


def test_readonly_blocks():
    assert all(pages.readonly_block(n) for n in (
        "pc.bios", "pc.rom", "isa-bios", "0000:00:02.0/vga.rom",
        "0000:00:02.0:00.0:01.0/qxl.vrom", "0000:00:03.0/vfio-pci.rom"))
    assert not any(pages.readonly_block(n) for n in (
        "pc.ram", "/rom@etc/table-loader", "system.flash0", "0000:00:02.0/vga.vram",
        "0000:00:01.0/qxl.vram"))
