"""apply.py: the decision (raise / keep) and the minimal XML edit, without libvirt."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from lxml import etree
from memlock_guard.accounting.modes import Mode
from memlock_guard.accounting.report import Report, Settings, assess
from memlock_guard.domain import parse_domain
from memlock_guard.host.facts import HostFacts
from memlock_guard.libvirtd import apply as ap
from memlock_guard.support import xmlsafe
from memlock_guard.support.errors import InputError

from ..apply_support import without_ours
from ..conftest import CORPUS, ROOT

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

STRICT = Settings(mode=Mode.STRICT, libvirt_version=(9, 0, 0))

# libvirt's own layout (virsh dumpxml --inactive of a libvirt 9.0 domain): the serializer
# and the edits must keep every untouched line byte for byte.
SHORT_XML = """\
<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>short-vm</name>
  <uuid>75b3aa42-e4c2-4d09-be57-716158c99093</uuid>
  <title>a &apos;quoted&apos; &quot;title&quot; &amp; &lt;x&gt;</title>
  <description>two
lines</description>
  <memory unit='KiB'>4194304</memory>
  <currentMemory unit='KiB'>4194304</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <boot dev='hd'/>
  </os>
  <features>
    <acpi/>
  </features>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='nvme' device='disk'>
      <driver name='qemu' type='raw'/>
      <source type='pci' managed='yes' namespace='1'>
        <address domain='0x0000' bus='0x02' slot='0x00' function='0x0'/>
      </source>
      <target dev='vda' bus='virtio'/>
    </disk>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source>
        <address domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
      </source>
    </hostdev>
    <graphics type='vnc' port='-1' autoport='yes' passwd='s3&apos;cret'>
      <listen type='address'/>
    </graphics>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-no-reboot'/>
  </qemu:commandline>
</domain>
"""


def judge(xml: str, host: HostFacts, settings: Settings = STRICT) -> Report:
    return assess(parse_domain(xml.encode()), host, settings)


def run(xml: str, host: HostFacts, settings: Settings = STRICT) -> ap.Result:
    return ap.apply_to_xml(xml, judge(xml, host, settings))


def changed_lines(diff: str) -> list[str]:
    return [line for line in diff.splitlines()
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def hard_limit_kib(xml: str) -> int | None:
    root = etree.fromstring(xml.encode())
    el = root.find("memtune/hard_limit")
    return None if el is None else int(el.text or "")


def test_short_domain_is_raised_to_the_recommendation(pinned_host: HostFacts) -> None:
    report = judge(SHORT_XML, pinned_host)
    assert report.verdict.fit.value == "short"
    res = ap.apply_to_xml(SHORT_XML, report)
    assert res.plan.action is ap.Action.RAISE
    assert res.plan.current_hard_limit is None
    assert res.plan.new_hard_limit == report.verdict.recommended_hard_limit
    assert hard_limit_kib(res.new_xml) == report.verdict.recommended_hard_limit // KiB
    assert res.plan.reason.startswith("short by ")


def test_edit_is_minimal_and_in_libvirt_order(pinned_host: HostFacts) -> None:
    res = run(SHORT_XML, pinned_host)
    assert res.old_xml == SHORT_XML  # libvirt's text comes back byte for byte
    added = changed_lines(res.diff)
    assert all(line.startswith("+") for line in added), added
    kib = res.plan.new_hard_limit // KiB  # type: ignore[operator]
    assert added[:3] == ["+  <metadata>", added[1], "+  </metadata>"]
    assert added[1].startswith('+    <mga:applied xmlns:mga="urn:memlock-guard:applied:1" '
                               f'value="{kib}" unit="KiB" mode="strict" version=')
    assert added[3:] == ["+  <memtune>", f"+    <hard_limit unit='KiB'>{kib}</hard_limit>",
                         "+  </memtune>"]
    lines = res.new_xml.splitlines()
    # <metadata> right after <description>, <memtune> right after <currentMemory>,
    # where libvirt prints them (so the next dumpxml matches what we showed).
    assert lines[lines.index("  <metadata>") - 1] == "lines</description>"
    assert lines[lines.index("  <memtune>") - 1].startswith("  <currentMemory")
    assert without_ours(res.new_xml) == without_ours(SHORT_XML)


def test_apply_is_idempotent(pinned_host: HostFacts) -> None:
    first = run(SHORT_XML, pinned_host)
    second = run(first.new_xml, pinned_host)
    assert second.plan.action is ap.Action.KEEP
    assert second.plan.ours
    assert not second.changed and second.diff == ""
    assert second.new_xml == first.new_xml


def test_provenance_matches_its_schema(pinned_host: HostFacts) -> None:
    res = run(SHORT_XML, pinned_host)
    el = etree.fromstring(res.new_xml.encode()).find(f"metadata/{ap.APPLIED_TAG}")
    assert el is not None
    schema = etree.RelaxNG(etree.parse(str(ROOT / "schemas" / "applied.rng")))
    assert schema.validate(el), schema.error_log
    prov = ap.provenance_of(res.new_xml)
    assert prov is not None
    assert prov.value_bytes == res.plan.new_hard_limit
    assert prov.ledger_digest == ap.ledger_digest(judge(SHORT_XML, pinned_host).ledger)


def test_never_lowers_a_hard_limit(pinned_host: HostFacts) -> None:
    big = SHORT_XML.replace("  <vcpu", "  <memtune>\n    <hard_limit unit='GiB'>64"
                                       "</hard_limit>\n  </memtune>\n  <vcpu")
    res = run(big, pinned_host)
    assert res.plan.action is ap.Action.KEEP and not res.changed
    assert res.plan.reason.startswith("fits")


def test_a_user_hard_limit_that_fits_is_left_alone(pinned_host: HostFacts) -> None:
    need = judge(SHORT_XML, pinned_host).verdict.required
    kib = -(-need // KiB)  # just enough, below the recommendation (no margin)
    xml = SHORT_XML.replace("  <vcpu", f"  <memtune>\n    <hard_limit unit='KiB'>{kib}"
                                       "</hard_limit>\n  </memtune>\n  <vcpu")
    res = run(xml, pinned_host)
    assert res.plan.action is ap.Action.KEEP and not res.plan.ours


def test_a_short_user_hard_limit_is_raised_in_place(pinned_host: HostFacts) -> None:
    xml = SHORT_XML.replace("  <vcpu", "  <memtune>\n    <hard_limit unit='G'>5</hard_limit>\n"
                                       "    <soft_limit unit='KiB'>1000</soft_limit>\n"
                                       "  </memtune>\n  <vcpu")
    res = run(xml, pinned_host)
    assert res.plan.action is ap.Action.RAISE
    assert res.plan.current_hard_limit == 5 * GiB
    kib = res.plan.new_hard_limit // KiB  # type: ignore[operator]
    changed = changed_lines(res.diff)
    assert "-    <hard_limit unit='G'>5</hard_limit>" in changed
    assert f"+    <hard_limit unit='KiB'>{kib}</hard_limit>" in changed
    assert "    <soft_limit unit='KiB'>1000</soft_limit>" in res.new_xml


def test_swap_hard_limit_is_raised_with_it_keeping_the_swap_allowance(
        pinned_host: HostFacts) -> None:
    xml = SHORT_XML.replace("  <vcpu", "  <memtune>\n    <hard_limit unit='GiB'>5</hard_limit>\n"
                                       "    <swap_hard_limit unit='GiB'>6</swap_hard_limit>\n"
                                       "  </memtune>\n  <vcpu")
    res = run(xml, pinned_host)
    new = res.plan.new_hard_limit
    assert new is not None
    root = etree.fromstring(res.new_xml.encode())
    swap = root.find("memtune/swap_hard_limit")
    assert swap is not None and swap.get("unit") == "KiB"
    assert int(swap.text or "") * KiB == new + 1 * GiB  # libvirt refuses hard > swap_hard


def test_own_limit_is_raised_again_when_devices_change(pinned_host: HostFacts) -> None:
    first = run(SHORT_XML, pinned_host).new_xml
    # 16 MiB more guest RAM, pinned by both containers: the memlock requirement still
    # fits under our limit (the 64 MiB margin absorbs it), but the recommendation grows,
    # and the limit is ours, so it follows.
    grown = first.replace("unit='KiB'>4194304<", "unit='KiB'>4210688<")
    report = judge(grown, pinned_host)
    assert report.verdict.fit.value == "fits"
    res = ap.apply_to_xml(grown, report)
    assert res.plan.ours
    assert res.plan.action is ap.Action.RAISE
    assert res.plan.new_hard_limit == report.verdict.recommended_hard_limit
    assert res.plan.reason.startswith("devices changed since memlock-guard set")
    # Exactly one <mga:applied>, replaced in place.
    assert res.new_xml.count("<mga:applied ") == 1
    assert ap.provenance_of(res.new_xml).ledger_digest == ap.ledger_digest(report.ledger)  # type: ignore[union-attr]
    assert run(res.new_xml, pinned_host).plan.action is ap.Action.KEEP


def test_own_limit_is_kept_when_devices_shrink(pinned_host: HostFacts) -> None:
    first = run(SHORT_XML, pinned_host).new_xml
    smaller = re.sub(r"    <graphics.*?</graphics>\n", "", first, flags=re.S)
    res = run(smaller, pinned_host)
    assert res.plan.ours and res.plan.action is ap.Action.KEEP


def test_a_limit_edited_by_hand_is_no_longer_ours(pinned_host: HostFacts) -> None:
    first = run(SHORT_XML, pinned_host)
    kib = first.plan.new_hard_limit // KiB  # type: ignore[operator]
    edited = first.new_xml.replace(f">{kib}</hard_limit>", f">{kib + 1024}</hard_limit>")
    res = run(edited, pinned_host)
    assert not res.plan.ours and res.plan.action is ap.Action.KEEP


def test_policy_metadata_is_kept_beside_ours(pinned_host: HostFacts) -> None:
    xml = SHORT_XML.replace(
        "  <memory", "  <metadata>\n    <mg:policy xmlns:mg=\"urn:memlock-guard:policy:1\">\n"
                     "      <mg:mode>strict</mg:mode>\n    </mg:policy>\n  </metadata>\n"
                     "  <memory", 1)
    res = run(xml, pinned_host)
    assert res.old_xml == xml
    added = changed_lines(res.diff)
    assert len(added) == 4 and added[0].startswith("+    <mga:applied")
    assert '<mg:policy xmlns:mg="urn:memlock-guard:policy:1">' in res.new_xml


def test_unlimited_and_nothing_pinned_are_left_alone(pinned_host: HostFacts) -> None:
    locked = SHORT_XML.replace("  <vcpu", "  <memoryBacking>\n    <locked/>\n"
                                          "  </memoryBacking>\n  <vcpu")
    assert run(locked, pinned_host).plan.action is ap.Action.KEEP
    plain = re.sub(r"    <(disk|hostdev) .*?</(disk|hostdev)>\n", "", SHORT_XML, flags=re.S)
    res = run(plain, pinned_host)
    assert res.plan.action is ap.Action.KEEP
    assert "nothing pins guest memory" in res.plan.reason


def test_tolerant_mode_is_recorded(pinned_host: HostFacts) -> None:
    res = run(SHORT_XML, pinned_host, Settings(mode=Mode.TOLERANT, libvirt_version=(9, 0, 0)))
    assert res.plan.action is ap.Action.RAISE
    assert 'mode="tolerant"' in res.new_xml


def test_unindented_input_stays_unindented(pinned_host: HostFacts) -> None:
    flat = re.sub(r">\s+<", "><", SHORT_XML.replace("two\nlines", "two lines")).strip()
    res = run(flat, pinned_host)
    assert res.plan.action is ap.Action.RAISE
    assert res.new_xml.count("\n") == 1  # the final newline only
    assert without_ours(res.new_xml) == without_ours(flat)


def test_ledger_digest_is_stable_and_tracks_devices(pinned_host: HostFacts) -> None:
    a = judge(SHORT_XML, pinned_host).ledger
    b = judge(SHORT_XML, pinned_host).ledger
    assert ap.ledger_digest(a) == ap.ledger_digest(b)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", ap.ledger_digest(a))
    more = SHORT_XML.replace("<memory unit='KiB'>4194304", "<memory unit='KiB'>8388608")
    assert ap.ledger_digest(judge(more, pinned_host).ledger) != ap.ledger_digest(a)
    # memtune and metadata are not part of what is pinned
    assert ap.ledger_digest(judge(run(SHORT_XML, pinned_host).new_xml, pinned_host).ledger) \
        == ap.ledger_digest(a)


def test_junk_provenance_is_ignored(pinned_host: HostFacts) -> None:
    xml = SHORT_XML.replace(
        "  <memory", "  <metadata>\n    <mga:applied xmlns:mga=\"urn:memlock-guard:applied:1\" "
                     "value=\"lots\"/>\n  </metadata>\n  <memory", 1)
    assert ap.provenance_of(xml) is None
    res = run(xml, pinned_host)
    assert res.plan.action is ap.Action.RAISE
    assert res.new_xml.count("<mga:applied ") == 1


def test_serializer_reproduces_libvirt_output_across_the_corpus() -> None:
    files = sorted(CORPUS.glob("*.x86_64-latest.xml"))
    if not files:
        pytest.skip(f"no corpus at {CORPUS}")
    differ = [f.name for f in files
              if ap.serialize(xmlsafe.parse(f.read_bytes(), what=f.name)) != f.read_text()]
    assert differ == [], differ[:5]
    assert len(files) >= 30


def test_examples_round_trip_through_apply(pinned_host: HostFacts) -> None:
    for path in sorted(Path(ROOT / "examples").glob("*.xml")):
        xml = path.read_text()
        res = run(xml, pinned_host)
        assert without_ours(res.new_xml) == without_ours(xml), path.name
        assert not run(res.new_xml, pinned_host).changed, path.name


def test_a_limit_libvirt_cannot_hold_is_an_error_not_an_edit(pinned_host: HostFacts) -> None:
    # libvirt's own corpus has such a domain (memory-align-fail: 8 EiB of memory).
    huge = SHORT_XML.replace("<memory unit='KiB'>4194304", "<memory unit='KiB'>9007199254740000")
    with pytest.raises(InputError, match="beyond the largest libvirt accepts"):
        run(huge, pinned_host)
