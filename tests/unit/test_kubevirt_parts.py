"""The sidecar's parts: the verdict splice into <metadata>, and the VMI JSON reader."""

from __future__ import annotations

from fractions import Fraction

import pytest
from lxml import etree
from memlock_guard.kubevirt.splice import verdict_element, with_verdict
from memlock_guard.kubevirt.vmi import load, quantity
from memlock_guard.support import xmlsafe
from memlock_guard.support.errors import InputError

from ..conftest import ROOT

NS = "urn:memlock-guard:kubevirt:1"
EL = verdict_element({"verdict": "fits", "note": "a > b & \"c\""})


def ours(data: bytes) -> list[etree._Element]:
    return xmlsafe.parse(data, what="t").findall(f".//{{{NS}}}verdict")


@pytest.mark.parametrize("doc", [
    b"<domain>\n\t<name>a</name>\n\t<metadata>\n\t\t<k xmlns='x'/>\n\t</metadata>\n</domain>",
    b"<domain><name>a</name><metadata></metadata></domain>",
    b"<domain><name>a</name><metadata/></domain>",
    b"<domain>\n  <name>a</name>\n</domain>\n",
    b"<?xml version='1.0'?>\n<domain><metadata><x:a xmlns:x='y' v='1>2'/></metadata></domain>",
])
def test_the_verdict_is_added_once_and_a_second_run_gives_the_same_bytes(doc: bytes):
    once = with_verdict(doc, EL)
    assert len(ours(once)) == 1
    assert ours(once)[0].get("note") == 'a > b & "c"'
    assert with_verdict(once, EL) == once
    # Nothing outside <metadata> moved.
    head = doc.split(b"<metadata", 1)[0] if b"<metadata" in doc else doc.rsplit(b"</domain>")[0]
    assert once.startswith(head.rstrip())


def test_earlier_verdicts_are_replaced_even_when_there_are_several():
    old = verdict_element({"verdict": "short"})
    doc = (b"<domain>\n\t<metadata>\n\t\t" + old + b"\n\t\t<k xmlns='x'/>\n\t\t" + old
           + b"\n\t</metadata>\n</domain>")
    out = with_verdict(doc, EL)
    assert [e.get("verdict") for e in ours(out)] == ["fits"]
    assert b"<k xmlns='x'/>" in out


def test_a_verdict_with_an_end_tag_is_replaced_too():
    doc = (f"<domain><metadata><mgk:verdict xmlns:mgk='{NS}' v='x'></mgk:verdict>"
           f"</metadata></domain>").encode()
    out = with_verdict(doc, EL)
    assert len(ours(out)) == 1 and b"v='x'" not in out


def test_other_bytes_are_untouched_when_ours_is_taken_out_again():
    src = (ROOT / "tests" / "data" / "kubevirt" / "kubevirt-domain-mixed-viommu.xml").read_bytes()
    out = with_verdict(src, EL)
    start = out.index(b"<mgk:verdict")
    end = out.index(b"/>", start) + 2
    ws = len(out[:start]) - len(out[:start].rstrip())
    assert out[:start - ws] + out[end:] == src


@pytest.mark.parametrize(("value", "exact"), [
    ("16Gi", 16 * 2**30), ("4096Mi", 2**32), ("1.5G", 1_500_000_000), ("2e9", 2 * 10**9),
    ("100m", Fraction(1, 10)), (17179869184, 2**34), ("0.5Ki", 512), (".5k", 500),
    ("+1Mi", 2**20), ("1E3", 1000)])
def test_kubernetes_quantities(value: object, exact: object):
    assert quantity(value, what="q") == exact


@pytest.mark.parametrize("value", ["1.5 Gi", "Gi", "1GB", "1gi", "--1", True, None, [1],
                                   "9" * 40, "1e99"])
def test_bad_quantities(value: object):
    with pytest.raises(InputError):
        quantity(value, what="q")


def test_the_vmi_record_from_the_fixtures():
    data = ROOT / "tests" / "data" / "kubevirt"
    gpu2 = load((data / "kubevirt-vmi-gpu2.json").read_bytes())
    assert gpu2.vmi.name == "gpu-workloads/vmi-gpu2"
    assert (gpu2.vmi.gpus, gpu2.vmi.host_devices, gpu2.vmi.sriov) == (2, 0, 0)
    assert (gpu2.vmi.vcpus, gpu2.vmi.requests_memory, gpu2.vmi.guest) == (8, 2**34, 2**34)
    assert gpu2.sidecars == 2
    assert gpu2.launcher_image == "quay.io/kubevirt/virt-launcher:v1.9.0"
    mixed = load((data / "kubevirt-vmi-mixed.json").read_bytes()).vmi
    assert (mixed.gpus, mixed.host_devices, mixed.sriov, mixed.n_vfio) == (2, 1, 1, 4)
    bare = load((data / "kubevirt-vmi-gpu1-norequests.json").read_bytes()).vmi
    assert bare.requests_memory == 0 and bare.guest == 4 * 2**30


def test_vcpus_follow_get_number_of_vcpus_then_the_cpu_limit():
    def vcpus(domain: str) -> int:
        return load(('{"spec": {"domain": ' + domain + "}}").encode()).vmi.vcpus

    assert vcpus('{"cpu": {"cores": 2, "sockets": 3, "threads": 2}}') == 12
    assert vcpus('{"cpu": {"sockets": 4}}') == 4
    assert vcpus('{"cpu": {}}') == 1
    assert vcpus('{"resources": {"limits": {"cpu": "1500m"}, "requests": {"cpu": "1"}}}') == 2
    assert vcpus('{"resources": {"requests": {"cpu": "3"}}}') == 3


def test_qos_guaranteed_counts_as_dedicated():
    def dedicated(res: str) -> bool:
        return load(('{"spec": {"domain": {"resources": ' + res + "}}}").encode()).vmi.dedicated

    assert dedicated('{"requests": {"cpu": "2", "memory": "1Gi"},'
                     ' "limits": {"cpu": "2000m", "memory": "1024Mi"}}')
    assert not dedicated('{"requests": {"cpu": "2", "memory": "1Gi"},'
                         ' "limits": {"cpu": "3", "memory": "1Gi"}}')
    assert dedicated('{"limits": {"cpu": "2", "memory": "1Gi"}, "requests": {"cpu": "2"}}')
