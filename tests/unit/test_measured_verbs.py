"""``measure --zero-pages`` and ``explain --measured`` as a user runs them: options, text,
JSON, exit status. The page reading itself is test_measure_pages.py's (and the e2e
tests', on a real QEMU); here it answers a fixed measurement."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from memlock_guard.cli import main
from memlock_guard.measure import pages
from memlock_guard.measure import target as target_mod
from memlock_guard.measure.pagemap import PageCount

from ..conftest import PINNED_HOST
from .test_measure import FakeTarget, data

KiB = 1024


def _measurement(vga_rom: PageCount | None, dev: str = "video0") -> pages.PageMeasurement:
    def ro(name: str, size: int, key: str, counts: PageCount | None,
           why: str | None = None) -> pages.RegionPages:
        return pages.RegionPages(name, True, size, (key,), None if why else 0x7000,
                                 None if why else "kvm-trace", counts, why)

    regions = (
        ro("pc.bios", 256 * KiB, "pc.bios", PageCount(64, 64, 0, 0, 0, map="W64")),
        ro(pages.ISA_BIOS_ALIAS, 128 * KiB, "isa-bios", PageCount(32, 32, 0, 0, 0)),
        ro("pc.rom", 128 * KiB, "pc.rom", PageCount(32, 0, 32, 0, 0, map="-32")),
        ro("0000:00:01.0/vga.rom", 64 * KiB, f"{dev}/bar6", vga_rom,
           None if vga_rom else "not mapped now; its size (0x10000) is shared with "
                                "/rom@etc/table-loader: use --boot"),
        pages.RegionPages("0000:00:01.0/vga.vram", False, 16 << 20, (f"{dev}/bar0",),
                          0x8000, "gpa2hva", PageCount(4096, 512, 3584, 0, 0, map="W512 -3584")),
    )
    return pages.PageMeasurement(regions, pages.PageFacts("6.1.0", "madvise", "0", "0", True),
                                 ())


@pytest.fixture
def measured(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The page probe answers what the test puts in the list (first element)."""
    box: list[Any] = [_measurement(PageCount(16, 10, 6, 0, 0, map="W10 -6"))]

    def done(self: pages.PageProbe, target: Any, log_text: str = "") -> Any:
        self.result = box[0]
        return box[0]

    monkeypatch.setattr(pages.PageProbe, "done", done)
    return box


def _measure(monkeypatch: pytest.MonkeyPatch, host: Path, *args: str) -> int:
    # q35-dimm.domain.xml: live XML (aliases), VGA video0, no NIC.
    target = FakeTarget(active=True, flatviews=[data("q35-dimm.mtree-f.txt")])
    monkeypatch.setattr(target_mod, "open_target", lambda name, uri=None: target)
    return main(["measure", "vm1", "--zero-pages", "--host-facts", str(host), *args])


def test_measure_zero_pages_json(monkeypatch, capsys, pinned_host_file, measured):
    assert _measure(monkeypatch, pinned_host_file, "--format", "json") == 0
    out = json.loads(capsys.readouterr().out)["measured"]
    rows = {r["region"]: r for r in out["zero_fill"]}
    assert {"region", "bytes", "written_bytes", "zero_fill_bytes",
            "estimated_zero_fill_bytes"} <= set(rows["pc.rom"])
    assert rows["0000:00:01.0/vga.rom"] | {"ledger_items": None} == {
        "region": "0000:00:01.0/vga.rom", "mapping": "video0/bar6", "bytes": 65536,
        "written_bytes": 40960, "zero_fill_bytes": 24576, "zero_page_bytes": 0,
        "unknown_bytes": 0, "estimated_zero_fill_bytes": 24576, "estimated_bytes": 65536,
        "difference_bytes": 0, "agrees": True, "ledger_items": None,
        "hva_source": "kvm-trace", "page_map": "W10 -6", "unresolved": None}
    assert out["zero_fill_totals"]["unresolved"] == 0
    assert out["zero_fill_totals"]["zero_fill_bytes"] == (128 + 24) * KiB
    assert out["read_write"][0]["populated_bytes"] == 2 << 20
    assert out["page_facts"]["transparent_hugepage"] == "madvise"


def test_measure_zero_pages_text_shows_the_same_table(monkeypatch, capsys, pinned_host_file,
                                                      measured):
    measured[0] = _measurement(None)
    assert _measure(monkeypatch, pinned_host_file) == 0
    out = capsys.readouterr().out
    assert "REGION" in out and "LEDGER" in out and "HVA FROM" in out
    assert "0000:00:01.0/vga.rom" in out and "unresolved" in out
    assert "unresolved 0000:00:01.0/vga.rom: not mapped now; its size" in out
    assert "read-write regions" in out and "pages: kernel 6.1.0, THP madvise" in out


def test_a_ledger_forgiving_written_pages_exits_1(monkeypatch, capsys, pinned_host_file,
                                                  measured):
    measured[0] = _measurement(PageCount(16, 16, 0, 0, 0, map="W16"))
    assert _measure(monkeypatch, pinned_host_file, "--format", "json") == 1
    (row,) = [r for r in json.loads(capsys.readouterr().out)["measured"]["zero_fill"]
              if r["mapping"] == "video0/bar6"]
    assert row["difference_bytes"] == -24 * KiB and row["agrees"] is False


def test_on_linux_6_2_a_pinning_domain_is_not_held_to_its_zero_fill(monkeypatch, capsys,
                                                                    tmp_path, measured):
    measured[0] = _measurement(PageCount(16, 16, 0, 0, 0, map="W16"))
    measured[0] = pages.PageMeasurement(
        measured[0].regions, pages.PageFacts("6.8.0", "madvise", "0", "0", True), ())
    host = tmp_path / "host.json"
    host.write_text(json.dumps(PINNED_HOST))
    xml = data("q35-dimm.domain.xml").replace(
        "</devices>", "<hostdev mode='subsystem' type='pci' managed='yes'><source><address "
        "domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></source></hostdev></devices>")
    target = FakeTarget(active=True, flatviews=[data("q35-dimm.mtree-f.txt")])
    target.xml = lambda: xml  # type: ignore[method-assign]
    monkeypatch.setattr(target_mod, "open_target", lambda name, uri=None: target)
    assert main(["measure", "vm1", "--zero-pages", "--host-facts", str(host)]) == 0
    assert "replaces the zero page with real pages" in capsys.readouterr().out


def test_help_teaches_zero_pages(capsys):
    with pytest.raises(SystemExit):
        main(["measure", "--help"])
    out = capsys.readouterr().out
    assert "--zero-pages" in out and "pagemap" in out and "never guessed" in out
    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    assert "--measured" in capsys.readouterr().out


# -- explain --measured, on libvirt's test driver --------------------------------------------

libvirt = pytest.importorskip("libvirt")


@pytest.fixture
def td(tmp_path: Path):
    from .testdriver import open_test_driver

    d = open_test_driver(tmp_path)
    yield d
    d.cleanup()


def _explain(td: Any, *args: str) -> list[str]:
    from .testdriver import URI

    return ["explain", *args, "--connect", URI, "--host-facts", str(td.host_facts),
            "--policy", str(td.policy)]


LIVE = """<domain type='test'><name>mgt-measured</name><memory unit='MiB'>256</memory>
<os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os><devices>
<video><model type='vga'/><alias name='ua-video0'/></video></devices></domain>"""


def test_explain_measured_puts_items_next_to_the_running_qemu(td, capsys, monkeypatch,
                                                              measured):
    td.define(LIVE)
    td.conn.lookupByName("mgt-measured").create()
    seen: list[str] = []

    def open_target(name: str, uri: str | None = None) -> FakeTarget:
        seen.append(name)
        return FakeTarget(active=True, flatviews=[data("q35-dimm.mtree-f.txt")])

    monkeypatch.setattr(target_mod, "open_target", open_target)
    # The test driver keeps only user aliases (ua-*), which QEMU would take as the id.
    got = _measurement(PageCount(16, 10, 6, 0, 0, map="W10 -6"), dev="ua-video0")
    measured[0] = pages.PageMeasurement(got.regions, got.facts, (), _snapshot(), ())
    assert main(_explain(td, "mgt-measured", "--measured", "--format", "json")) == 0
    doc = json.loads(capsys.readouterr().out)
    assert seen == ["mgt-measured"] and doc["definition"] == "live"
    items = {i["source"]: i for i in doc["measured"]["items"]}
    assert items["pc.bios (bios-256k.bin)"]["mapped_now_bytes"] == 256 * KiB
    tail = items["video ua-video0 ROM BAR vgabios-stdvga.bin (never-written tail)"]
    assert tail["mapping"] == "ua-video0/bar6" and tail["measured_bytes"] == 24 * KiB
    assert doc["measured"]["zero_fill_totals"]["regions"] == 4
    assert main(_explain(td, "mgt-measured", "--measured")) == 0
    text = capsys.readouterr().out
    assert "measured: the running QEMU, item by item" in text and "MAPPED NOW" in text
    assert "zero-fill of the read-only regions" in text


def test_explain_measured_needs_a_running_domain(td, capsys):
    td.define(LIVE)
    assert main(_explain(td, "mgt-measured", "--measured")) == 2
    assert capsys.readouterr().err.strip() == (
        "memlock-guard: domain 'mgt-measured' is not running; drop --measured to explain "
        "its persistent definition")


def _snapshot() -> Any:
    from memlock_guard.measure.mappings import snapshot

    return snapshot(data("q35-dimm.mtree-f.txt"), frozenset({"ram-node0", "memdimm0"}))
