"""OpenStack Nova instances: recognised by <nova:instance>, judged as any domain, but told
to change what Nova defines them from (the flavor and the image), not the domain.

The fixtures are what the hook sees (Nova's XML normalised by a real libvirt 9.0) and
Nova's <metadata> blocks of Victoria (namespace 1.0) and Wallaby..2025.1 (1.1), see
tests/data/nova and docs/sources.md.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from memlock_guard import cli
from memlock_guard.domain import parse_domain

from ..conftest import PINNED_HOST, ROOT
from .test_hook import Env, canonical_without_memtune

DATA = ROOT / "tests" / "data" / "nova"
GPU = DATA / "nova-domain-gpu-viommu.xml"
NOVA_1_1 = "http://openstack.org/xmlns/libvirt/nova/1.1"
# Ubuntu 22.04 compute nodes run libvirt 8.0: before 8.7 libvirt gives memory + 1 GiB
# whatever the vIOMMU, so the vIOMMU flavor with two GPUs is short there.
OLD_LIBVIRT = {**PINNED_HOST, "libvirt_version": "8.0.0", "kernel_release": "6.8.0"}


def with_metadata(block_file: str) -> bytes:
    block = re.sub(r"<!--.*?-->", "", (DATA / block_file).read_text(), flags=re.S)
    return re.sub(r"<metadata>.*</metadata>", block.strip(), GPU.read_text(),
                  flags=re.S).encode()


def test_nova_32_metadata_is_read_whole():
    nova = parse_domain(GPU.read_bytes()).nova
    assert nova is not None
    assert (nova.namespace, nova.package, nova.name) == (NOVA_1_1, "32.1.0", "gpu-train-01")
    assert (nova.flavor, nova.flavor_memory_mib) == ("g1.2xa10", 16384)
    assert nova.extra_spec("hw:viommu_model") == "intel"
    assert nova.extra_spec("hw_video:ram_max_mb") == "128"
    assert nova.image_property("hw_video_ram") == "64"
    assert nova.image == "fe55c69a-8b2e-4bbc-811a-9ad2023a0426"
    assert nova.ports == ("567a4527-b0e4-4d0a-bcc2-71fda37897f7",)
    assert nova.detailed


@pytest.mark.parametrize(("block", "namespace", "package"), [
    ("nova-metadata-1.0-victoria.xml", "http://openstack.org/xmlns/libvirt/nova/1.0", "22.4.0"),
    ("nova-metadata-1.1-wallaby-to-31.xml", NOVA_1_1, "30.2.0")])
def test_older_novas_are_recognised_without_specs(block: str, namespace: str, package: str):
    nova = parse_domain(with_metadata(block)).nova
    assert nova is not None
    assert (nova.namespace, nova.package, nova.flavor) == (namespace, package, "g1.2xa10")
    assert nova.extra_specs == () and not nova.detailed


def test_a_domain_without_nova_metadata_is_not_nova():
    xml = re.sub(r"<metadata>.*</metadata>", "", GPU.read_text(), flags=re.S)
    assert parse_domain(xml.encode()).nova is None
    other = xml.replace("<name>", "<metadata><x:instance xmlns:x='urn:other'/></metadata><name>")
    assert parse_domain(other.encode()).nova is None


def estimate(tmp_path: Path, capsys: pytest.CaptureFixture[str], xml: bytes,
             facts: dict[str, Any], *extra: str) -> tuple[str, dict[str, Any]]:
    x, h = tmp_path / "d.xml", tmp_path / "h.json"
    x.write_bytes(xml)
    h.write_text(json.dumps(facts))
    assert cli.main(["estimate", "--xml", str(x), "--host-facts", str(h), *extra]) == 0
    text = capsys.readouterr().out
    assert cli.main(["estimate", "--xml", str(x), "--host-facts", str(h), "--format", "json",
                     *extra]) == 0
    return text, json.loads(capsys.readouterr().out)


def test_a_short_nova_instance_gets_flavor_and_image_remedies(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    text, doc = estimate(tmp_path, capsys, GPU.read_bytes(), OLD_LIBVIRT)
    assert doc["verdict"] == "short" and doc["platform"] == "nova"
    assert doc["domain"]["nova"]["flavor"] == "g1.2xa10"
    actions = [r["action"] for r in doc["remedies"]]
    assert actions == ["locked-memory", "drop-viommu", "hard-limit-one-off"]
    locked = doc["remedies"][0]
    assert locked["command"] == ("openstack flavor set NEW_FLAVOR --property "
                                 "hw:locked_memory=true --property hw:mem_page_size=large")
    assert "openstack server resize --flavor NEW_FLAVOR 0f6c2a8e" in locked["text"]
    assert "hw:viommu_model='intel'" in doc["remedies"][1]["text"]
    one_off = doc["remedies"][-1]
    assert not one_off["lasting"] and "virsh memtune" in one_off["command"]
    assert "next hard reboot" in one_off["text"]
    assert "remedies:" in text and "flavor 'g1.2xa10'" in text
    assert "set <memtune><hard_limit>" not in text  # that advice is for plain libvirt


def test_video_ram_is_offered_when_it_is_what_makes_the_difference(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    # 2 x 768 MiB of VGA RAM behind a vIOMMU under libvirt 9.0: 2 x memory + 1 GiB is
    # short by the video RAM alone, and the image property lowers it.
    xml = GPU.read_text().replace("vram='65536'", "vram='786432'").replace(
        '"hw_video_ram">64<', '"hw_video_ram">768<')
    _, doc = estimate(tmp_path, capsys, xml.encode(), PINNED_HOST)
    assert doc["verdict"] == "short"
    video = [r for r in doc["remedies"] if r["action"] == "video-ram"]
    assert len(video) == 1
    assert "now 768 MiB" in video[0]["text"] and "hw_video:ram_max_mb=128" in video[0]["text"]
    assert "nova-manage image_property set 0f6c2a8e" in video[0]["text"]


def test_a_locked_nova_instance_is_unlimited_and_needs_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    _, doc = estimate(tmp_path, capsys, (DATA / "nova-domain-locked.xml").read_bytes(),
                      OLD_LIBVIRT)
    assert (doc["verdict"], doc["remedies"]) == ("unlimited", [])


def test_the_hook_refusal_names_the_instance_flavor_and_what_to_change(tmp_path: Path):
    env = Env(tmp_path)
    env.facts.write_text(json.dumps(OLD_LIBVIRT))
    r = env.run("prepare", GPU.read_bytes(), name="instance-0000002a")
    assert r.rc == 1
    line = r.stderr.strip()
    assert "\n" not in line
    assert line.startswith("memlock-guard refused the start: domain 'instance-0000002a' "
                           "(OpenStack Nova instance 'gpu-train-01', flavor 'g1.2xa10')")
    assert "Nova redefines this domain from its flavor and image" in line
    assert "hw:locked_memory=true" in line and "openstack server resize" in line
    assert "as a one-off only, virsh memtune instance-0000002a" in line
    assert "run: memlock-guard apply" not in line


def test_a_plain_libvirt_refusal_keeps_its_wording(tmp_path: Path):
    env = Env(tmp_path)
    env.facts.write_text(json.dumps(OLD_LIBVIRT))
    xml = re.sub(r"<metadata>.*</metadata>", "", GPU.read_text(), flags=re.S)
    line = env.run("prepare", xml.encode(), name="instance-0000002a").stderr
    assert "Remedy: virsh memtune instance-0000002a --hard-limit " in line
    assert line.strip().endswith("or run: memlock-guard apply instance-0000002a")


# -- live migration: the destination's migrate hook on Nova's migratable XML -----------

MIGRATE = DATA / "nova-migrate-gpu-viommu.xml"


def metadata_c14n(xml: str | bytes) -> bytes:
    root = etree.fromstring(xml if isinstance(xml, bytes) else xml.encode())
    return etree.tostring(root.find("metadata"), method="c14n")


def test_the_migrate_rewrite_keeps_novas_metadata_and_changes_only_memtune(tmp_path: Path):
    env = Env(tmp_path)
    env.facts.write_text(json.dumps(OLD_LIBVIRT))  # an older libvirt on the destination
    src = MIGRATE.read_bytes()
    r = env.run("migrate", src, name="instance-0000002a")
    assert r.rc == 0 and r.stdout, r.stderr
    assert metadata_c14n(r.stdout) == metadata_c14n(src)
    assert canonical_without_memtune(r.stdout) == canonical_without_memtune(src)
    assert parse_domain(r.stdout.encode()).nova == parse_domain(src).nova
    assert r.records[-1]["action"] == "adjust"


def test_a_detached_sriov_port_behind_a_viommu_is_budgeted_for_its_reattachment(
        tmp_path: Path):
    env = Env(tmp_path)
    env.facts.write_text(json.dumps(OLD_LIBVIRT))
    src = MIGRATE.read_text()
    plain = env.run("migrate", src.encode(), name="instance-0000002a").records[-1]
    # A second port, direct (SR-IOV): Nova detached it before migrating, so no interface
    # names it; it comes back by hotplug on the destination, one more vIOMMU container.
    port = ("<nova:port uuid='9b1e2c3d-4f50-4a6b-8c7d-0e1f2a3b4c5d'><nova:ip type='fixed' "
            "address='10.30.0.7' ipVersion='4'/></nova:port>")
    two = src.replace("</nova:ports>", port + "</nova:ports>")
    more = env.run("migrate", two.encode(), name="instance-0000002a").records[-1]
    assert more["hard_limit_to"] - plain["hard_limit_to"] == 16 * 1024**3
    # Without a vIOMMU a re-attached VF joins the one container: nothing more to budget.
    # (A hard_limit set too low by hand makes both short, so both are rewritten.)
    def flat(xml: str) -> bytes:
        xml = re.sub(r"<iommu .*?</iommu>", "", xml, flags=re.S)
        return xml.replace("<vcpu", "<memtune><hard_limit unit='GiB'>1</hard_limit>"
                                    "</memtune><vcpu", 1).encode()

    a = env.run("migrate", flat(two), name="instance-0000002a").records[-1]
    b = env.run("migrate", flat(src), name="instance-0000002a").records[-1]
    assert a["action"] == b["action"] == "adjust"
    assert a["hard_limit_to"] == b["hard_limit_to"]
