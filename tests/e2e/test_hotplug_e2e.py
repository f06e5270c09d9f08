"""Hotplug against the real libvirtd: the warning, attach-device --config, a failing live
attach put back, detach-device. Everything is checked with virsh, as a user would.

This host has no VFIO: a live PCI hostdev attach fails in libvirt's
qemuHostdevPreparePCIDevicesCheckSupport ("host doesn't support passthrough of host PCI
devices"), before libvirt tries to raise QEMU's memlock limit, so it is a deterministic
failing attach that leaves no "original" memlock recorded behind (docs/sources.md
section 13). A --config attach of a hostdev works: libvirt does not look at the host
then.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from lxml import etree

from ..apply_support import APPLIED_NS, without_ours
from .conftest import URI, Libvirtd, unique_name

pytestmark = pytest.mark.e2e

KiB = 1024
GiB = 1024 ** 3

# One GPU behind a vIOMMU, and a hard_limit that fits it (1 GiB pinned) but not two.
VIOMMU = """\
<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>1024</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <features><acpi/><ioapic driver='qemu'/></features>
  <memtune><hard_limit unit='KiB'>1200000</hard_limit></memtune>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <hostdev mode='subsystem' type='pci' managed='no'>
      <source><address domain='0x0000' bus='0x05' slot='0x00' function='0x0'/></source>
    </hostdev>
    <iommu model='intel'><driver intremap='on'/></iommu>
    <graphics type='vnc' passwd='s3cret'/>
  </devices>
</domain>
"""
GPU2 = """<hostdev mode='subsystem' type='pci' managed='no'>
  <source><address domain='0x0000' bus='0x06' slot='0x00' function='0x0'/></source>
</hostdev>
"""
# A small TCG VM that starts here: no passthrough device, no hard_limit at start.
RUNNING = """\
<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>1024</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
  </devices>
</domain>
"""


def mg(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    policy = tmp_path / "policy.xml"
    if not policy.exists():
        policy.write_text('<policy xmlns="urn:memlock-guard:policy:1"><mode>strict</mode>'
                          f"<audit-log>{tmp_path / 'audit.jsonl'}</audit-log></policy>")
    return subprocess.run([sys.executable, "-m", "memlock_guard.cli", *args, "--connect", URI,
                           "--policy", str(policy)],
                          capture_output=True, text=True, timeout=300)


def dumpxml(lv: Libvirtd, name: str, *flags: str) -> str:
    return lv.virsh("dumpxml", "--security-info", *flags, name).stdout


def hard_limit_kib(xml: str) -> int | None:
    el = etree.fromstring(xml.encode()).find("memtune/hard_limit")
    return None if el is None else int(el.text or "")


def gpu2_file(tmp_path: Path) -> Path:
    p = tmp_path / "gpu2.xml"
    p.write_text(GPU2)
    return p


def test_check_warns_when_the_hard_limit_fits_one_gpu_but_not_a_second(
        libvirtd: Libvirtd, tmp_path: Path) -> None:
    name = libvirtd.define(VIOMMU.format(name=unique_name("hp-warn")))
    r = mg(tmp_path, "check", name)
    assert r.returncode == 0, r.stderr  # it fits: a warning is not a shortfall
    warning = [line for line in r.stdout.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1 and re.fullmatch(
        f"warning: {name}: hard_limit 1.14 GiB leaves no room for one more VFIO device "
        r"behind the vIOMMU \(that needs 2.0\d GiB\); libvirt does not grow a hard_limit at "
        "hotplug, so hot-add it with memlock-guard attach-device, not virsh attach-device",
        warning[0]), warning
    (row,) = json.loads(mg(tmp_path, "check", name, "--format", "json").stdout)
    assert row["verdict"] == "fits"
    assert [w["kind"] for w in row["warnings"]] == ["vfio-device"]
    assert row["warnings"][0]["limit_bytes"] == 1200000 * KiB
    # one more container: twice what one GPU pins now
    assert row["warnings"][0]["needed_bytes"] == 2 * row["required_bytes"]
    r = mg(tmp_path, "explain", name)
    assert f"warning    {name}: hard_limit 1.14 GiB leaves no room" in r.stdout


def test_attach_device_config_raises_in_one_step_and_changes_nothing_else(
        libvirtd: Libvirtd, tmp_path: Path) -> None:
    gpu2 = gpu2_file(tmp_path)
    ours = libvirtd.define(VIOMMU.format(name=unique_name("hp-cfg")))
    twin = libvirtd.define(VIOMMU.format(name=unique_name("hp-twin")))
    before = dumpxml(libvirtd, ours, "--inactive")

    dry = mg(tmp_path, "attach-device", ours, str(gpu2), "--config", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "1. raise the persistent hard_limit to " in dry.stdout
    assert "2. attach the device (--config)" in dry.stdout and " ... done" not in dry.stdout
    assert dumpxml(libvirtd, ours, "--inactive") == before
    assert not (tmp_path / "audit.jsonl").exists()

    r = mg(tmp_path, "attach-device", ours, str(gpu2), "--config", "--format", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["result"] == "done"
    assert [(s["action"], s["status"]) for s in doc["steps"]] == [
        ("raise-hard-limit", "done"), ("attach", "done")]
    after = dumpxml(libvirtd, ours, "--inactive")
    # Both devices are in; the hard_limit covers both containers, raised once.
    assert after.count("<hostdev ") == 2
    (d,) = doc["definitions"]
    assert d["containers"] == 2 and d["required_bytes"] > 2 * GiB
    assert hard_limit_kib(after) * KiB == d["hard_limit_to_bytes"] >= d["required_bytes"]
    assert f'<mga:applied xmlns:mga="{APPLIED_NS}" value="{hard_limit_kib(after)}"' in after
    assert "passwd='s3cret'" in after
    # Nothing else changed: the same as virsh attach-device --config on a twin.
    libvirtd.virsh("attach-device", twin, str(gpu2), "--config")
    expected = dumpxml(libvirtd, twin, "--inactive")
    expected = re.sub(r"<uuid>[^<]*</uuid>", "", expected.replace(twin, ours))
    assert without_ours(re.sub(r"<uuid>[^<]*</uuid>", "", after)) == without_ours(expected)
    # It fits now, and the digest it recorded is the one of the definition libvirt holds.
    assert mg(tmp_path, "check", ours).returncode == 0
    assert "devices unchanged since" in mg(tmp_path, "explain", ours).stdout
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(x["op"], x["action"], x["definition"]) for x in records] == [
        ("attach-device", "apply", "persistent")]


def test_a_failing_live_attach_puts_the_live_hard_limit_back(
        libvirtd: Libvirtd, tmp_path: Path) -> None:
    name = libvirtd.define(RUNNING.format(name=unique_name("hp-live")))
    libvirtd.virsh("start", name)
    # A live hard_limit short of the 1 GiB one GPU would pin (set as an operator would;
    # QEMU's memory use is far below it, so the cgroup accepts it).
    libvirtd.virsh("memtune", name, "--live", "--hard-limit", "524288")
    persistent = dumpxml(libvirtd, name, "--inactive")

    r = mg(tmp_path, "attach-device", name, str(gpu2_file(tmp_path)), "--live")
    assert r.returncode == 2
    assert "1. raise the live hard_limit to " in r.stdout and "(was 512 MiB) ... done" in r.stdout
    assert "host doesn't support passthrough of host PCI devices" in r.stdout
    assert "3. put the live hard_limit back to 512 MiB ... done" in r.stdout
    assert r.stderr.strip().endswith("every limit raised was put back")
    assert len(r.stderr.strip().splitlines()) == 1
    assert "hard_limit     : 524288" in libvirtd.virsh("memtune", name, "--live").stdout
    assert hard_limit_kib(dumpxml(libvirtd, name)) == 524288
    assert dumpxml(libvirtd, name).count("<hostdev ") == 0
    assert dumpxml(libvirtd, name, "--inactive") == persistent


def test_detach_device_config_keeps_the_hard_limit(libvirtd: Libvirtd,
                                                   tmp_path: Path) -> None:
    name = libvirtd.define(VIOMMU.format(name=unique_name("hp-det")))
    gpu2 = gpu2_file(tmp_path)
    assert mg(tmp_path, "attach-device", name, str(gpu2), "--config").returncode == 0
    raised = hard_limit_kib(dumpxml(libvirtd, name, "--inactive"))
    r = mg(tmp_path, "detach-device", name, str(gpu2), "--config")
    assert r.returncode == 0, r.stderr
    assert "without the device it needs 1.00 GiB" in r.stdout
    assert "kept (detach-device never lowers a hard_limit)" in r.stdout
    after = dumpxml(libvirtd, name, "--inactive")
    assert after.count("<hostdev ") == 1 and hard_limit_kib(after) == raised
