"""The KubeVirt hook sidecar, run exactly as KubeVirt's sidecar shim runs it.

cmd/sidecars/sidecar_shim.go runOnDefineDomain: ``exec.LookPath("onDefineDomain")``,
then ``exec.Command("onDefineDomain", "--vmi", vmiJSON, "--domain", domainXML).Output()``:
found on PATH, both documents inline argv strings, stdout the domain XML, any non-zero
exit a failed sync. The fixtures are a VMI as virt-launcher marshals it and the domain
XML virt-launcher 1.9 builds (Go encoding/xml), the *-viommu ones after a typical
user-written Python sidecar added an <iommu> (tests/data/kubevirt, docs/sources.md §5).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from lxml import etree

from ..conftest import ROOT

DATA = ROOT / "tests" / "data" / "kubevirt"
HOOK_DIR = ROOT / "hooks" / "kubevirt"
OURS = re.compile(rb"\s*<mgk:verdict [^>]*/>")
VERDICT_NS = "urn:memlock-guard:kubevirt:1"


def text(name: str) -> str:
    return (DATA / name).read_text()


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    p = tmp_path / "policy.xml"
    p.write_text('<policy xmlns="urn:memlock-guard:policy:1"><mode>strict</mode></policy>')
    return p


def shim(vmi: str, domain: str, policy: Path, **env: str) -> subprocess.CompletedProcess[bytes]:
    """What the shim does: onDefineDomain from PATH, --vmi and --domain inline."""
    path = f"{HOOK_DIR}:{Path(sys.executable).parent}:/usr/bin:/bin"
    exe = shutil.which("onDefineDomain", path=path)
    assert exe is not None and os.access(exe, os.X_OK)
    environ = {"PATH": path, "MEMLOCK_GUARD_POLICY": str(policy), **env}
    return subprocess.run(["onDefineDomain", "--vmi", vmi, "--domain", domain],
                          executable=exe, env=environ, capture_output=True, timeout=60,
                          check=False)


def err_lines(out: subprocess.CompletedProcess[bytes]) -> list[str]:
    lines = out.stderr.decode().splitlines()
    assert "Traceback" not in out.stderr.decode()
    assert all(line.startswith("memlock-guard: ") for line in lines), lines
    return lines


def edited(path: list[str], value: object) -> str:
    """gpu1's VMI with one field replaced."""
    doc = json.loads(text("kubevirt-vmi-gpu1.json"))
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return json.dumps(doc)


def strip_ours(data: bytes) -> bytes:
    return OURS.sub(b"", data)


# -- fits: the XML passes through --------------------------------------------------------

@pytest.mark.parametrize("version", ["1.0.0", "1.7.0", "1.9.0", "main"])
def test_a_fitting_vm_passes_through_with_every_other_byte_unchanged(version: str,
                                                                     policy: Path):
    domain = text("kubevirt-domain-gpu1.xml")
    out = shim(text("kubevirt-vmi-gpu1.json"), domain, policy,
               MEMLOCK_GUARD_KUBEVIRT_VERSION=version)
    assert out.returncode == 0, out.stderr
    assert strip_ours(out.stdout) == domain.encode()
    # The devices, byte for byte, as KubeVirt sent them.
    devices = re.compile(rb"<devices>.*</devices>", re.S)
    assert devices.findall(out.stdout) == devices.findall(domain.encode())
    root = etree.fromstring(out.stdout)
    (verdict,) = root.findall(f"metadata/{{{VERDICT_NS}}}verdict")
    assert verdict.get("verdict") == "fits" and verdict.get("kubevirt") == version
    assert root.find("metadata/{http://kubevirt.io}kubevirt") is not None


def test_the_hook_is_idempotent_on_its_own_output(policy: Path):
    vmi = text("kubevirt-vmi-gpu1.json")
    once = shim(vmi, text("kubevirt-domain-gpu1.xml"), policy,
                MEMLOCK_GUARD_KUBEVIRT_VERSION="1.9.0").stdout
    twice = shim(vmi, once.decode(), policy, MEMLOCK_GUARD_KUBEVIRT_VERSION="1.9.0").stdout
    assert twice == once
    assert once.count(b"<mgk:verdict ") == 1


def test_the_viommu_vm_fits_under_1_8_3_and_later(policy: Path):
    domain = text("kubevirt-domain-gpu2-viommu.xml")
    for version in ("1.8.3", "1.9.0"):
        out = shim(text("kubevirt-vmi-gpu2.json"), domain, policy,
                   MEMLOCK_GUARD_KUBEVIRT_VERSION=version)
        assert out.returncode == 0, out.stderr
        assert strip_ours(out.stdout) == domain.encode()
        assert b'verdict="fits"' in out.stdout
        assert b'limit="35433480192"' in out.stdout  # QEMU gets libvirt's own number


# -- short: refused, with KubeVirt's remedies ---------------------------------------------

def test_the_sidecar_injected_viommu_is_refused_under_1_7_with_kubevirt_remedies(
        policy: Path):
    out = shim(text("kubevirt-vmi-gpu2.json"), text("kubevirt-domain-gpu2-viommu.xml"),
               policy, MEMLOCK_GUARD_KUBEVIRT_VERSION="1.7.0",
               MEMLOCK_GUARD_KUBEVIRT_OVERHEAD_RATIO="")
    assert out.returncode == 1
    assert out.stdout == b""
    (line,) = err_lines(out)
    assert line.startswith("memlock-guard: refused VMI gpu-workloads/vmi-gpu2 (KubeVirt 1.7.0)")
    assert "35433480192 bytes" in line and "18626904881 bytes" in line  # L and M
    assert "QEMU cannot start" in line
    assert 'additionalGuestMemoryOverheadRatio: "12.62"' in line
    assert "upgrade KubeVirt to 1.8.3 or later" in line
    assert "remove the <iommu>" in line
    assert "virsh" not in line and "memtune" not in line


def test_under_1_8_the_remedy_is_reserved_overhead_with_its_feature_gate(policy: Path):
    out = shim(text("kubevirt-vmi-gpu2.json"), text("kubevirt-domain-gpu2-viommu.xml"),
               policy, MEMLOCK_GUARD_KUBEVIRT_VERSION="v1.8.2")
    assert out.returncode == 1
    line = err_lines(out)[-1]
    assert "reservedOverhead: {addedOverhead: 16028Mi, memLock: Required}" in line
    assert "ReservedOverheadMemlock" in line
    assert "virsh" not in line
    # ... and the VMI with that remedy applied starts.
    fixed = shim(text("kubevirt-vmi-gpu2-reserved.json"),
                 text("kubevirt-domain-gpu2-viommu.xml"), policy,
                 MEMLOCK_GUARD_KUBEVIRT_VERSION="1.8.2")
    assert fixed.returncode == 0, fixed.stderr


def test_mixed_devices_gpu_nvme_and_sriov_count_as_n_vfio(policy: Path):
    vmi, domain = text("kubevirt-vmi-mixed.json"), text("kubevirt-domain-mixed-viommu.xml")
    old = shim(vmi, domain, policy, MEMLOCK_GUARD_KUBEVIRT_VERSION="1.8.0")
    assert old.returncode == 1
    assert "addedOverhead: 11988Mi" in err_lines(old)[-1]
    new = shim(vmi, domain, policy, MEMLOCK_GUARD_KUBEVIRT_VERSION="1.8.3")
    assert new.returncode == 0, new.stderr


def test_warn_mode_passes_the_xml_and_logs_the_paragraph(tmp_path: Path):
    p = tmp_path / "warn.xml"
    p.write_text('<policy xmlns="urn:memlock-guard:policy:1">'
                 '<on-shortfall>warn</on-shortfall></policy>')
    domain = text("kubevirt-domain-gpu2-viommu.xml")
    out = shim(text("kubevirt-vmi-gpu2.json"), domain, p,
               MEMLOCK_GUARD_KUBEVIRT_VERSION="1.7.0")
    assert out.returncode == 0
    assert strip_ours(out.stdout) == domain.encode()
    assert b'verdict="short"' in out.stdout
    assert "warning (on-shortfall warn" in err_lines(out)[-1]


# -- where the version comes from --------------------------------------------------------

def test_version_from_the_policy_file_then_the_environment(tmp_path: Path):
    p = tmp_path / "policy.xml"
    p.write_text('<policy xmlns="urn:memlock-guard:policy:1"><kubevirt-version>1.7.0'
                 '</kubevirt-version><kubevirt-overhead-ratio>1.0</kubevirt-overhead-ratio>'
                 '</policy>')
    vmi, domain = text("kubevirt-vmi-gpu2.json"), text("kubevirt-domain-gpu2-viommu.xml")
    by_policy = shim(vmi, domain, p)
    assert by_policy.returncode == 1
    assert "(KubeVirt 1.7.0)" in err_lines(by_policy)[-1]
    assert not any("warning" in x for x in err_lines(by_policy))  # both are configured
    by_env = shim(vmi, domain, p, MEMLOCK_GUARD_KUBEVIRT_VERSION="1.9.0")
    assert by_env.returncode == 0


def test_without_configuration_the_launcher_image_then_the_default_with_a_warning(
        policy: Path):
    vmi = json.loads(text("kubevirt-vmi-gpu2.json"))
    domain = text("kubevirt-domain-gpu2-viommu.xml")
    out = shim(json.dumps(vmi), domain, policy)  # launcher image v1.9.0
    assert out.returncode == 0
    lines = err_lines(out)
    assert any("1.9.0 taken from the VMI's launcher image" in x for x in lines)
    vmi["status"]["launcherContainerImageVersion"] = "quay.io/kubevirt/virt-launcher:v1.7.2"
    assert shim(json.dumps(vmi), domain, policy).returncode == 1
    del vmi["status"]["launcherContainerImageVersion"]
    out = shim(json.dumps(vmi), domain, policy)
    assert out.returncode == 0  # the default, 1.9.0
    assert any(x.startswith("memlock-guard: warning: KubeVirt version unknown")
               and "assuming 1.9.0" in x for x in err_lines(out))


def test_a_bad_configured_version_takes_on_error(policy: Path):
    out = shim(text("kubevirt-vmi-gpu1.json"), text("kubevirt-domain-gpu1.xml"), policy,
               MEMLOCK_GUARD_KUBEVIRT_VERSION="1.10.0")
    assert out.returncode == 0  # on-error allow: passed through, unchanged
    assert out.stdout == text("kubevirt-domain-gpu1.xml").encode()
    (line,) = err_lines(out)
    assert "not a KubeVirt version memlock-guard knows" in line and "say main" in line


def test_a_broken_policy_that_says_refuse_fails_the_sync(tmp_path: Path):
    p = tmp_path / "broken.xml"
    p.write_text("<policy xmlns='urn:memlock-guard:policy:1'><on-error>refuse</on-error><mode>")
    out = shim(text("kubevirt-vmi-gpu1.json"), text("kubevirt-domain-gpu1.xml"), p)
    assert out.returncode == 1 and out.stdout == b""
    assert "on-error is refuse" in err_lines(out)[0]


def test_other_sidecars_that_may_run_later_are_named(policy: Path):
    # gpu2's VMI also runs a sidecar that adds the <iommu>; here memlock-guard ran first.
    out = shim(text("kubevirt-vmi-gpu2.json"), text("kubevirt-domain-gpu2.xml"), policy,
               MEMLOCK_GUARD_KUBEVIRT_VERSION="1.7.0")
    assert out.returncode == 0
    assert any("2 hook sidecars and KubeVirt does not order them" in x for x in err_lines(out))


# -- bad input: one line, exit 2, never a traceback -------------------------------------

BAD = {
    "truncated VMI JSON": (lambda: text("kubevirt-bad-truncated-vmi.json"),
                           lambda: text("kubevirt-domain-gpu1.xml"), "--vmi is not valid JSON"),
    "truncated domain XML": (lambda: text("kubevirt-vmi-gpu1.json"),
                             lambda: text("kubevirt-bad-truncated-domain.xml"),
                             "--domain XML"),
    "empty VMI": (lambda: "", lambda: text("kubevirt-domain-gpu1.xml"), "--vmi is empty"),
    "empty domain": (lambda: text("kubevirt-vmi-gpu1.json"), lambda: "", "is empty"),
    "a JSON list": (lambda: "[1, 2]", lambda: text("kubevirt-domain-gpu1.xml"),
                    "not a JSON object"),
    "NaN": (lambda: '{"spec": {"domain": {"cpu": {"cores": NaN}}}}',
            lambda: text("kubevirt-domain-gpu1.xml"), "not valid JSON"),
    "deep nesting": (lambda: '{"a":' * 100 + "1" + "}" * 100,
                     lambda: text("kubevirt-domain-gpu1.xml"), "nests more than 64"),
    "no spec.domain": (lambda: '{"metadata": {"name": "x"}}',
                       lambda: text("kubevirt-domain-gpu1.xml"), "no spec.domain"),
    "a string as memory": (lambda: edited(["spec", "domain", "memory", "guest"], "4 gigs"),
                           lambda: text("kubevirt-domain-gpu1.xml"),
                           "spec.domain.memory.guest '4 gigs' is not a quantity"),
    "gpus not a list": (lambda: edited(["spec", "domain", "devices", "gpus"], {"a": 1}),
                        lambda: text("kubevirt-domain-gpu1.xml"),
                        "spec.domain.devices.gpus is not a list"),
    "negative request": (lambda: edited(["spec", "domain", "resources", "requests", "memory"],
                                        "-1Gi"),
                         lambda: text("kubevirt-domain-gpu1.xml"), "is negative"),
    "a DOCTYPE": (lambda: text("kubevirt-vmi-gpu1.json"),
                  lambda: '<!DOCTYPE d [<!ENTITY x "y">]>' + text("kubevirt-domain-gpu1.xml"),
                  "DOCTYPE"),
    "not a domain": (lambda: text("kubevirt-vmi-gpu1.json"), lambda: "<network/>",
                     "not <domain>"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_and_exit_2(case: str, policy: Path):
    vmi, domain, expected = BAD[case]
    out = shim(vmi(), domain(), policy, MEMLOCK_GUARD_KUBEVIRT_VERSION="1.9.0")
    assert out.returncode == 2, out.stderr
    assert out.stdout == b""
    (line,) = err_lines(out)
    assert expected in line, line


@pytest.mark.parametrize("argv", [[], ["--vmi", "{}"], ["--domain", "<domain/>"],
                                  ["--vmi", "{}", "--domain"], ["--vmi", "{}", "--vmi", "{}"],
                                  ["--version", "v1alpha3"]])
def test_bad_arguments_are_one_line_with_the_usage(argv: list[str], policy: Path):
    exe = HOOK_DIR / "onDefineDomain"
    out = subprocess.run([sys.executable, str(exe), *argv], capture_output=True, timeout=60,
                         env={"MEMLOCK_GUARD_POLICY": str(policy)}, check=False)
    assert out.returncode == 2 and out.stdout == b""
    (line,) = err_lines(out)
    assert "usage: onDefineDomain --vmi <VMI JSON> --domain <domain XML>" in line


def test_help_says_how_to_call_it_and_what_it_reads():
    out = subprocess.run([sys.executable, str(HOOK_DIR / "onDefineDomain"), "--help"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0 and out.stderr == ""
    assert out.stdout.startswith("usage: onDefineDomain --vmi <VMI JSON> --domain <domain XML>")
    for name in ("MEMLOCK_GUARD_KUBEVIRT_VERSION", "MEMLOCK_GUARD_KUBEVIRT_OVERHEAD_RATIO",
                 "MEMLOCK_GUARD_POLICY"):
        assert name in out.stdout


def test_a_vmi_over_the_size_cap_is_refused_before_parsing():
    from memlock_guard.kubevirt.sidecar import run
    from memlock_guard.support.defaults import MAX_VMI_JSON_BYTES

    big = '{"x": "' + "a" * MAX_VMI_JSON_BYTES + '"}'
    answer = run(["--vmi", big, "--domain", text("kubevirt-domain-gpu1.xml")],
                 {"MEMLOCK_GUARD_POLICY": "/nonexistent"})
    assert answer.code == 2
    assert answer.stderr == (f"--vmi is larger than {MAX_VMI_JSON_BYTES // 1024} KiB",)
