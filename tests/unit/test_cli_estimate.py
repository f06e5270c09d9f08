"""``memlock-guard estimate``: exit 0 with an estimate, exit 2 and one stderr line for
bad input, never a traceback."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from memlock_guard.cli import main

from ..conftest import EXAMPLES, ROOT
from .builders import GiB, domain_xml, hostdevs

CLI = [sys.executable, "-m", "memlock_guard.cli"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["estimate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def xml_file(tmp_path: Path) -> Path:
    p = tmp_path / "vm.xml"
    p.write_bytes(domain_xml(hostdevs(2), memory="4", unit="GiB"))
    return p


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.xml")), ids=lambda p: p.stem)
def test_examples_estimate_with_exit_0(capsys, pinned_host_file, example):
    code, out, err = run(capsys, "--xml", str(example), "--host-facts", str(pinned_host_file))
    assert (code, err) == (0, "")
    assert "verdict:" in out and "required" in out and "QEMU gets" in out


def test_json_format_is_one_json_document(capsys, pinned_host_file, xml_file):
    code, out, _ = run(capsys, "--xml", str(xml_file), "--host-facts", str(pinned_host_file),
                       "--format", "json", "--mode", "strict", "--libvirt-version", "10.0.0")
    assert code == 0
    doc = json.loads(out)
    assert doc["mode"] == "strict"
    assert doc["baselines"]["libvirt"] == doc["baselines"]["libvirt"] | {
        "version": "10.0.0", "bytes": 4 * GiB + GiB, "unlimited": False}
    assert doc["effective_limit"]["bytes"] == 4 * GiB + GiB
    assert doc["required_bytes"]["strict"] >= doc["required_bytes"]["tolerant"] > 4 * GiB


def test_options_reach_the_report(capsys, pinned_host_file, xml_file):
    base = ["--xml", str(xml_file), "--host-facts", str(pinned_host_file), "--format", "json"]
    _, out, _ = run(capsys, *base, "--mode", "tolerant", "--zero-page-allowance", "0",
                    "--margin", "1GiB", "--kubevirt-version", "main", "--platform", "kubevirt")
    doc = json.loads(out)
    assert doc["mode"] == "tolerant"
    assert doc["zero_page_allowance_bytes"] == 0
    assert doc["required_bytes"]["tolerant"] == doc["required_bytes"]["strict"]  # nothing forgiven
    assert doc["baselines"]["kubevirt"]["version"] == "main"
    assert doc["baselines"]["kubevirt"]["unlimited"]
    # virt-handler sets unlimited on main, but libvirt in the pod still sets QEMU's limit
    # to its own number (the launcher's libvirt for that KubeVirt), so that is the limit.
    assert doc["baselines"]["libvirt"]["version"] == "11.10.0"
    assert doc["effective_limit"]["source"] == "kubevirt"
    assert doc["effective_limit"]["bytes"] == doc["baselines"]["libvirt"]["bytes"]
    footprint_or_need = max(doc["required_bytes"]["tolerant"], doc["footprint_bytes"])
    assert doc["recommended_hard_limit_bytes"] >= footprint_or_need + GiB


def test_auto_mode_comes_from_the_host_facts(capsys, pinned_host_file, xml_file):
    _, out, _ = run(capsys, "--xml", str(xml_file), "--host-facts", str(pinned_host_file),
                    "--format", "json")
    assert json.loads(out)["mode"] == "tolerant"  # the pinned host runs 6.1


def test_xml_from_stdin(monkeypatch, capsys, pinned_host_file):
    data = domain_xml(hostdevs(1))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    code, out, _ = run(capsys, "--xml", "-", "--host-facts", str(pinned_host_file),
                       "--format", "json")
    assert code == 0 and json.loads(out)["domain"]["name"] == "t"


def _bad(tmp_path: Path, name: str, content: bytes) -> str:
    p = tmp_path / name
    p.write_bytes(content)
    return str(p)


BAD_INPUTS = {
    "missing file": lambda t, h: ["--xml", str(t / "nope.xml")],
    "not xml": lambda t, h: ["--xml", _bad(t, "a.xml", b"<domain><name>x</domain>")],
    "empty": lambda t, h: ["--xml", _bad(t, "a.xml", b"")],
    "doctype": lambda t, h: ["--xml", _bad(t, "a.xml", b"<!DOCTYPE d [<!ENTITY x SYSTEM "
                                           b"'file:///etc/passwd'>]><domain>&x;</domain>")],
    "not a domain": lambda t, h: ["--xml", _bad(t, "a.xml", b"<network/>")],
    "bad memory unit": lambda t, h: ["--xml", _bad(t, "a.xml", domain_xml(unit="parsecs"))],
    "bad memory value": lambda t, h: ["--xml", _bad(t, "a.xml", domain_xml(memory="-4"))],
    "bad libvirt version": lambda t, h: ["--xml", _bad(t, "a.xml", domain_xml()),
                                         "--libvirt-version", "nine"],
    "bad kubevirt version": lambda t, h: ["--xml", _bad(t, "a.xml", domain_xml()),
                                          "--kubevirt-version", "0.1"],
    "bad margin": lambda t, h: ["--xml", _bad(t, "a.xml", domain_xml()), "--margin", "lots"],
    "bad allowance": lambda t, h: ["--xml", _bad(t, "a.xml", domain_xml()),
                                   "--zero-page-allowance", "-1"],
    "host facts missing": lambda t, h: ["--xml", _bad(t, "a.xml", domain_xml()),
                                        "--host-facts", str(t / "nope.json")],
    "host facts not json": lambda t, h: ["--xml", _bad(t, "a.xml", domain_xml()),
                                         "--host-facts", _bad(t, "h.json", b"{not json")],
    "host facts unknown key": lambda t, h: ["--xml", _bad(t, "a.xml", domain_xml()),
                                            "--host-facts", _bad(t, "h.json", b'{"x": 1}')],
    "host facts bad rom size": lambda t, h: [
        "--xml", _bad(t, "a.xml", domain_xml()),
        "--host-facts", _bad(t, "h.json", b'{"rom_sizes": {"efi-virtio.rom": -5}}')],
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line(capsys, tmp_path, pinned_host_file, case):
    argv = BAD_INPUTS[case](tmp_path, pinned_host_file)
    if "--host-facts" not in argv:
        argv += ["--host-facts", str(pinned_host_file)]
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("memlock-guard: "), err
    assert "Traceback" not in err and "root:" not in err


def test_as_a_process_exit_codes_and_streams(tmp_path, pinned_host_file):
    good = subprocess.run([*CLI, "estimate", "--xml", str(EXAMPLES / "viommu-3vfs.xml"),
                           "--host-facts", str(pinned_host_file), "--format", "json"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert good.returncode == 0 and good.stderr == ""
    assert json.loads(good.stdout)["containers"]["count"] == 3
    bad = subprocess.run([*CLI, "estimate", "--xml", "-", "--host-facts",
                          str(pinned_host_file)], input="<domain>", capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert bad.returncode == 2 and bad.stdout == ""
    assert len(bad.stderr.splitlines()) == 1 and "Traceback" not in bad.stderr
