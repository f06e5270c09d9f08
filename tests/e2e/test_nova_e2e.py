"""A Nova instance's live migration through the hook, against the real libvirtd 9.0.

On the destination libvirt runs the ``migrate begin`` hook on Nova's migratable XML
(qemu_migration.c qemuMigrationDstPrepareFresh) and parses what the hook prints. The
fixture is that XML (virsh dumpxml --migratable of a Nova-defined domain, hostdev
sources moved as Nova 31's _update_pci_dev_xml does); the hook judges it under an older
destination libvirt (8.0: memory + 1 GiB whatever the vIOMMU), so it raises hard_limit.
Here the real daemon must accept that XML, with Nova's metadata whole.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
from lxml import etree
from memlock_guard.domain import parse_domain

from ..conftest import PINNED_HOST, ROOT
from ..unit.test_hook import Env
from .conftest import Libvirtd, unique_name

pytestmark = pytest.mark.e2e

MIGRATE = ROOT / "tests" / "data" / "nova" / "nova-migrate-gpu-viommu.xml"


def renamed(xml: str, name: str) -> str:
    """Another name and uuid (in <sysinfo> too, which libvirt holds equal), so no one
    else's domain is touched."""
    old = re.search(r"<uuid>([^<]*)</uuid>", xml)
    assert old is not None
    xml = re.sub(r"<name>[^<]*</name>", f"<name>{name}</name>", xml, count=1)
    return xml.replace(old.group(1), str(uuid.uuid4()))


def test_the_hooks_migrate_answer_for_a_nova_instance_is_defined_by_libvirt(
        libvirtd: Libvirtd, tmp_path: Path):
    env = Env(tmp_path)
    env.facts.write_text(json.dumps({**PINNED_HOST, "libvirt_version": "8.0.0"}))
    src = MIGRATE.read_text()
    answer = env.run("migrate", src.encode(), name="instance-0000002a")
    assert answer.rc == 0 and answer.stdout, answer.stderr
    assert env.records()[-1]["action"] == "adjust"
    name = libvirtd.define(renamed(answer.stdout, unique_name("nova-mig")))
    stored = libvirtd.virsh("dumpxml", name, "--inactive").stdout
    root = etree.fromstring(stored.encode())
    kib = env.records()[-1]["hard_limit_to"] // 1024
    assert root.findtext("memtune/hard_limit") == str(kib)
    # libvirt kept Nova's metadata as Nova wrote it, so Nova can still read its instance.
    assert parse_domain(stored.encode()).nova == parse_domain(src.encode()).nova
    # ... and the API Nova itself reads it through (virDomainGetMetadata) finds it.
    got = libvirtd.virsh("metadata", name, "--config", "--uri",
                         "http://openstack.org/xmlns/libvirt/nova/1.1").stdout
    assert got.startswith("<instance>") and "<name>gpu-train-01</name>" in got
