"""A ``<rom file='/absolute/path'>`` that does not exist: QEMU refuses to start (issue 15 §3).

QEMU's pci_add_option_rom() fails with ``failed to find romfile`` (qemu_find_file has no
file-name fallback for a path; reproduced with libvirt 9.0 + QEMU 7.2, docs/sources.md
§10). memlock-guard still sizes the item by its file name, and says so in the item, in
the verdict of estimate and explain, and in the hook's paragraph.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from memlock_guard import cli
from memlock_guard.domain import parse_domain
from memlock_guard.hook import entry as hook
from memlock_guard.host import probe

from ..conftest import PINNED_HOST
from .builders import GiB, KiB, domain_xml, hostdevs, report

NS = "urn:memlock-guard:policy:1"
# The pinned host, but read from the machine (probe_host true): only then are the
# files a domain names looked for.
PROBED = {k: v for k, v in PINNED_HOST.items() if k != "probe_host"}


def nic(rom: str) -> str:
    return f"<interface type='user'><model type='virtio'/>{rom}</interface>"


def test_the_item_and_the_verdict_say_qemu_will_not_start(tmp_path: Path):
    missing = str(tmp_path / "nowhere" / "pxe-virtio.rom")
    xml = domain_xml(nic(f"<rom file='{missing}'/>"))
    host = probe.collect(extra_files=parse_domain(xml).named_files, override=PROBED)
    assert host.missing_files == (missing,)
    r = report(host, xml)
    (item,) = [i for i in r.ledger.items if "pxe-virtio.rom" in i.source and i.note]
    assert "does not exist on this host: QEMU will refuse to start (failed to find " \
           "romfile)" in (item.note or "")
    assert r.will_not_start == (f"QEMU will refuse to start it: <rom file='{missing}'> "
                                "does not exist on this host (failed to find romfile).",)


def test_estimate_text_and_json(tmp_path: Path, capsys: Any):
    missing = tmp_path / "gone.rom"
    xml = tmp_path / "d.xml"
    xml.write_bytes(domain_xml(nic(f"<rom file='{missing}'/>")))
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps(PROBED))
    assert cli.main(["estimate", "--xml", str(xml), "--host-facts", str(facts)]) == 0
    out = capsys.readouterr().out
    verdict = next(line for line in out.splitlines() if line.startswith("verdict:"))
    assert f"QEMU will refuse to start it: <rom file='{missing}'>" in verdict
    assert "failed to find romfile" in out.split("verdict:")[0]  # the item's note
    assert cli.main(["estimate", "--xml", str(xml), "--host-facts", str(facts),
                     "--format", "json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert len(got["will_not_start"]) == 1 and str(missing) in got["will_not_start"][0]


def test_files_that_exist_or_are_not_loaded_say_nothing(tmp_path: Path):
    there = tmp_path / "mine.rom"
    there.write_bytes(b"\0" * 70000)
    gone = tmp_path / "gone.rom"
    for rom in (f"<rom file='{there}'/>", "<rom file='pxe-virtio.rom'/>",
                f"<rom enabled='no' file='{gone}'/>", f"<rom bar='off' file='{gone}'/>"):
        xml = domain_xml(nic(rom))
        host = probe.collect(extra_files=parse_domain(xml).named_files, override=PROBED)
        r = report(host, xml)
        assert r.will_not_start == (), rom
        assert not any("refuse to start" in (i.note or "") for i in r.ledger.items), rom
    # Not looked for (another host's facts): nothing is claimed either.
    assert report(probe.collect(override=PINNED_HOST),
                  domain_xml(nic(f"<rom file='{gone}'/>"))).will_not_start == ()


def test_the_hooks_paragraph_says_it_in_the_same_line(tmp_path: Path):
    missing = tmp_path / "gone.rom"
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps(PROBED))
    policy = tmp_path / "policy.xml"
    policy.write_text(f'<policy xmlns="{NS}"><mode>strict</mode>'
                      f"<audit-log>{tmp_path / 'audit.jsonl'}</audit-log></policy>")
    memtune = f"<memtune><hard_limit unit='KiB'>{GiB // KiB}</hard_limit></memtune>"
    xml = domain_xml(hostdevs(1) + nic(f"<rom file='{missing}'/>"), extra=memtune)
    err = io.StringIO()
    rc = hook.run(["vm", "prepare", "begin", "-"], stdin=io.BytesIO(xml),
                  stdout=io.StringIO(), stderr=err, policy_path=str(policy),
                  facts_path=str(facts), use_syslog=False, deadline=0)
    text = err.getvalue()
    assert rc == 1 and text.count("\n") == 1, text
    assert "refused the start" in text
    assert text.rstrip().endswith(f"QEMU will refuse to start it: <rom file='{missing}'> "
                                  "does not exist on this host (failed to find romfile).")
