"""attach-device / detach-device against libvirt's test:///default driver.

libvirt 9.0's test driver has no attach or detach at all: every call fails with "this
function is not supported by the connection driver" (VIR_ERR_NO_SUPPORT). That makes it
the deterministic failing hotplug the rollback needs, while its memtune, metadata and
define calls are real. The successful --config attach runs against the real daemon
(tests/e2e/test_hotplug_e2e.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("libvirt")

from memlock_guard import cli

from .testdriver import URI, Driver, open_test_driver

GiB = 1024 ** 3

# One GPU behind a vIOMMU, and a hard_limit that fits it (4 GiB pinned) but not two.
VIOMMU_DOMAIN = """\
<domain type='test'>
  <name>{name}</name>
  <memory unit='GiB'>4</memory>
  <vcpu>2</vcpu>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
  <memtune><hard_limit unit='GiB'>5</hard_limit></memtune>
  <devices>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source><address domain='0x0000' bus='0x05' slot='0x00' function='0x0'/></source>
    </hostdev>
    <iommu model='intel'/>
  </devices>
</domain>
"""
GPU2 = """<hostdev mode='subsystem' type='pci' managed='yes'>
  <source><address domain='0x0000' bus='0x06' slot='0x00' function='0x0'/></source>
</hostdev>
"""


@pytest.fixture
def td(tmp_path: Path) -> Iterator[Driver]:
    d = open_test_driver(tmp_path)
    yield d
    d.cleanup()


@pytest.fixture
def gpu2(tmp_path: Path) -> Path:
    p = tmp_path / "gpu2.xml"
    p.write_text(GPU2)
    return p


def mg(td: Driver, *args: str) -> list[str]:
    return [*args, "--connect", URI, "--host-facts", str(td.host_facts),
            "--policy", str(td.policy), "--mode", "strict"]


def live_hard_limit(dom: object) -> int:
    import libvirt  # type: ignore[import-untyped]

    return int(dom.memoryParameters(libvirt.VIR_DOMAIN_AFFECT_LIVE)["hard_limit"])  # type: ignore[attr-defined]


def running(td: Driver, name: str) -> object:
    dom = td.define(VIOMMU_DOMAIN.format(name=name))
    dom.create()
    return dom


def test_a_failing_live_attach_puts_the_live_hard_limit_back(
        td: Driver, gpu2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dom = running(td, "mgt-hp-live")
    before_live, before_config = dom.XMLDesc(0), td.xml("mgt-hp-live")  # type: ignore[attr-defined]
    assert live_hard_limit(dom) == 5 * 1024 * 1024

    code = cli.main(mg(td, "attach-device", "mgt-hp-live", str(gpu2), "--live"))
    out, err = capsys.readouterr()
    assert code == 2
    assert "1. raise the live hard_limit to 8.06 GiB (was 5 GiB) ... done" in out
    assert "2. attach the device (--live) ... failed: " in out
    assert "not supported by the connection driver" in out
    assert "3. put the live hard_limit back to 5 GiB ... done" in out
    assert len(err.splitlines()) == 1 and err.endswith("every limit raised was put back\n")
    assert live_hard_limit(dom) == 5 * 1024 * 1024
    after_live = dom.XMLDesc(0)  # type: ignore[attr-defined]
    # The live XML is as it was, but for the empty <metadata/> virDomainSetMetadata
    # leaves once it held our element.
    assert after_live.replace("  <metadata/>\n", "") == before_live
    assert td.xml("mgt-hp-live") == before_config
    records = [json.loads(line) for line in td.audit_log.read_text().splitlines()]
    assert [(r["op"], r["action"], r["definition"]) for r in records] == [
        ("attach-device", "apply", "live"), ("attach-device", "restore", "live")]
    assert records[0]["hard_limit_from"] == records[1]["hard_limit_to"] == 5 * GiB


def test_live_and_config_both_raised_and_both_put_back(
        td: Driver, gpu2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dom = running(td, "mgt-hp-both")
    before_config = td.xml("mgt-hp-both")
    code = cli.main(mg(td, "attach-device", "mgt-hp-both", str(gpu2), "--live", "--config",
                       "--format", "json"))
    doc = json.loads(capsys.readouterr().out)
    assert code == 2 and doc["result"] == "failed" and doc["restored"] is True
    assert [(s["action"], s["definition"], s["status"]) for s in doc["steps"]] == [
        ("raise-hard-limit", "live", "done"), ("raise-hard-limit", "persistent", "done"),
        ("attach", None, "failed"), ("restore-hard-limit", "persistent", "done"),
        ("restore-hard-limit", "live", "done")]
    assert live_hard_limit(dom) == 5 * 1024 * 1024
    assert td.xml("mgt-hp-both") == before_config  # redefined exactly as it was


def test_dry_run_changes_nothing_and_lists_the_steps(
        td: Driver, gpu2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dom = running(td, "mgt-hp-dry")
    before = (dom.XMLDesc(0), td.xml("mgt-hp-dry"))  # type: ignore[attr-defined]
    code = cli.main(mg(td, "attach-device", "mgt-hp-dry", str(gpu2), "--persistent",
                       "--dry-run", "--format", "json"))
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["result"] == "planned" and doc["dry_run"] is True
    assert (doc["live"], doc["config"]) == (True, True)  # --persistent on a running domain
    assert [(s["action"], s["definition"], s["status"]) for s in doc["steps"]] == [
        ("raise-hard-limit", "live", "planned"), ("raise-hard-limit", "persistent", "planned"),
        ("attach", None, "planned")]
    persistent = next(d for d in doc["definitions"] if d["definition"] == "persistent")
    assert persistent["containers"] == 2 and persistent["action"] == "raise"
    assert persistent["hard_limit_to_bytes"] >= 2 * 4 * GiB
    assert "+    <hard_limit unit='KiB'>" in persistent["diff"]
    assert (dom.XMLDesc(0), td.xml("mgt-hp-dry")) == before  # type: ignore[attr-defined]
    assert not td.audit_log.exists()


def test_nothing_to_raise_means_nothing_to_put_back(
        td: Driver, gpu2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    roomy = VIOMMU_DOMAIN.format(name="mgt-hp-roomy").replace(">5</hard_limit>",
                                                               ">16</hard_limit>")
    td.define(roomy).create()
    code = cli.main(mg(td, "attach-device", "mgt-hp-roomy", str(gpu2)))  # no flag: live
    out, err = capsys.readouterr()
    assert code == 2 and "keep: fits" in out and "raise" not in out.split("keep:")[0]
    assert err.strip().endswith("; nothing was changed")


def test_detach_device_never_lowers_a_hard_limit(
        td: Driver, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    two = VIOMMU_DOMAIN.format(name="mgt-hp-detach").replace(
        "    <iommu", GPU2 + "    <iommu").replace(">5</hard_limit>", ">9</hard_limit>")
    td.define(two).create()
    gpu1 = tmp_path / "gpu1.xml"
    gpu1.write_text(GPU2.replace("0x06", "0x05"))
    code = cli.main(mg(td, "detach-device", "mgt-hp-detach", str(gpu1), "--config",
                       "--dry-run"))
    out = capsys.readouterr().out
    assert code == 0
    assert "persistent: without the device it needs 4.00 GiB (strict, 1 container(s))" in out
    assert "hard_limit 9 GiB kept (detach-device never lowers a hard_limit)" in out
    assert "1. detach the device (--config)" in out and "raise" not in out


def test_flags_resolve_as_virsh_does(td: Driver, gpu2: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    td.define(VIOMMU_DOMAIN.format(name="mgt-hp-off"))  # defined, shut off
    assert cli.main(mg(td, "attach-device", "mgt-hp-off", str(gpu2))) == 2
    err = capsys.readouterr().err
    assert err.startswith("memlock-guard: domain 'mgt-hp-off' is not running; give --config")
    assert cli.main(mg(td, "attach-device", "mgt-hp-off", str(gpu2), "--current",
                       "--live")) == 2
    assert "--current cannot be combined" in capsys.readouterr().err
    # --current on a shut-off domain: the persistent definition.
    assert cli.main(mg(td, "attach-device", "mgt-hp-off", str(gpu2), "--current",
                       "--dry-run", "--format", "json")) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["live"], doc["config"]) == (False, True)


@pytest.mark.parametrize("content, message", [
    ("<domain type='kvm'/>", "<domain> is not a device libvirt attaches"),
    ("<hostdev", "is not well-formed"),
    ("<!DOCTYPE h [<!ENTITY x SYSTEM 'file:///etc/shadow'>]><hostdev>&x;</hostdev>",
     "DOCTYPE or ENTITY"),
    ("", "is empty"),
    ("<hostdev>" + "<x/>" * 300_000 + "</hostdev>", "larger than 1 MiB"),
])
def test_a_bad_device_file_is_one_line(td: Driver, tmp_path: Path, content: str,
                                       message: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    running(td, "mgt-hp-bad")
    f = tmp_path / "dev.xml"
    f.write_text(content)
    assert cli.main(mg(td, "attach-device", "mgt-hp-bad", str(f))) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and message in err, err


def test_a_missing_file_or_a_fifo_is_one_line(td: Driver, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "fifo.xml"
    os.mkfifo(fifo)
    for path, message in ((tmp_path / "none.xml", "No such file"),
                          (fifo, "is not a regular file")):
        assert cli.main(mg(td, "attach-device", "test", str(path))) == 2
        out, err = capsys.readouterr()
        assert out == "" and len(err.splitlines()) == 1 and message in err, err
