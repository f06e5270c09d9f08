"""The KubeVirt sidecar's output is a domain libvirt defines, with its verdict readable.

virt-launcher defines the exact string the last sidecar prints. Here the real libvirtd
9.0 (system mode, where virt-launcher runs 9.0-11.10 in session mode) defines what the
sidecar printed for the fixture VMI, and keeps the <mgk:verdict> in <metadata>.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from ..conftest import ROOT
from .conftest import Libvirtd, unique_name

pytestmark = pytest.mark.e2e

DATA = ROOT / "tests" / "data" / "kubevirt"


def test_the_sidecars_output_is_defined_by_libvirt_with_its_verdict(libvirtd: Libvirtd,
                                                                    tmp_path: Path):
    policy = tmp_path / "policy.xml"
    policy.write_text('<policy xmlns="urn:memlock-guard:policy:1"/>')
    hook = ROOT / "hooks" / "kubevirt" / "onDefineDomain"
    out = subprocess.run(
        ["onDefineDomain", "--vmi", (DATA / "kubevirt-vmi-gpu2.json").read_text(),
         "--domain", (DATA / "kubevirt-domain-gpu2-viommu.xml").read_text()],
        executable=str(hook), capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
             "MEMLOCK_GUARD_POLICY": str(policy), "MEMLOCK_GUARD_KUBEVIRT_VERSION": "1.9.0",
             "MEMLOCK_GUARD_KUBEVIRT_OVERHEAD_RATIO": ""})
    assert out.returncode == 0, out.stderr
    # Another name, and another uuid for the one libvirt takes from <sysinfo>.
    old = re.search(r'<entry name="uuid">([^<]*)</entry>', out.stdout)
    assert old is not None
    xml = re.sub(r"<name>[^<]*</name>", f"<name>{unique_name('kv-sidecar')}</name>",
                 out.stdout.replace(old.group(1), str(uuid.uuid4())), count=1)
    name = libvirtd.define(xml)
    got = libvirtd.virsh("metadata", name, "--config", "--uri",
                         "urn:memlock-guard:kubevirt:1").stdout
    assert got.startswith("<verdict ") and 'verdict="fits"' in got
    assert 'kubevirt="1.9.0"' in got and 'limit="35433480192"' in got
    stored = libvirtd.virsh("dumpxml", name, "--inactive").stdout
    assert stored.count("<iommu model='intel'>") == 1  # what the earlier sidecar added
