"""Hotplug in the accounting: memory up to maxMemory, the VFIO reserve, the warnings.

The rule under test everywhere here: what a later hotplug may add is in the recommended
hard_limit (estimate, apply, the hook's remedy) and never in the requirement at start,
so a VM libvirt would start is never refused for memory it might hot-add.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from memlock_guard.accounting import hotplug
from memlock_guard.accounting.modes import Mode
from memlock_guard.accounting.report import Settings, assess
from memlock_guard.baselines.libvirt import libvirt_limit
from memlock_guard.cli import main
from memlock_guard.domain import parse_domain
from memlock_guard.domain.edit import add_device, raised_memtune, remove_device
from memlock_guard.hook import entry as hook
from memlock_guard.host.facts import HostFacts
from memlock_guard.libvirtd import apply as ap
from memlock_guard.policy import load as pol
from memlock_guard.support import xmlsafe

from .builders import GiB, KiB, MiB, domain_xml, hostdevs

STRICT = Settings(mode=Mode.STRICT, libvirt_version=(9, 0, 0))
NUMA16 = "<cpu><numa><cell id='0' cpus='0-3' memory='16' unit='GiB'/></numa></cpu>"


def max_memory_xml(devices: str = hostdevs(1), *, max_gib: int = 64, slots: int = 16,
                   extra: str = "", memtune: str = "") -> bytes:
    """The issue's domain: maxMemory 64 GiB, memory 16 GiB, one GPU."""
    return domain_xml(devices, memory="16", unit="GiB", vcpus=4,
                      extra=f"<maxMemory slots='{slots}' unit='GiB'>{max_gib}</maxMemory>"
                            f"{NUMA16}{memtune}{extra}")


VIOMMU_ONE_GPU = domain_xml(hostdevs(1) + "<iommu model='intel'/>", memory="4", unit="GiB",
                            extra="<memtune><hard_limit unit='GiB'>5</hard_limit></memtune>")


# -- the domain: how much memory can still be hot-added ---------------------------------

def test_hotpluggable_memory_follows_libvirts_rules() -> None:
    d = parse_domain(max_memory_xml())
    assert (d.max_memory, d.memory, d.memory_slots) == (64 * GiB, 16 * GiB, 16)
    assert d.hotpluggable_memory == 48 * GiB
    # A memory device already present is in <memory> (the NUMA cells plus devices).
    dimm = ("<memory model='dimm'><target><size unit='GiB'>8</size><node>0</node>"
            "</target></memory>")
    with_dimm = parse_domain(max_memory_xml(hostdevs(1) + dimm))
    assert with_dimm.memory == 24 * GiB and with_dimm.hotpluggable_memory == 40 * GiB
    # virtio-mem is counted at its maximum <size> already: nothing counted twice.
    vmem = ("<memory model='virtio-mem'><target><size unit='GiB'>32</size><node>0</node>"
            "<block unit='MiB'>2</block><requested unit='GiB'>0</requested></target>"
            "</memory>")
    d = parse_domain(max_memory_xml(hostdevs(1) + vmem))
    assert d.memory == 48 * GiB and d.hotpluggable_memory == 16 * GiB
    # Every slot taken: libvirt refuses another memory device ("memory device count
    # exceeds slots count"), so nothing more can be hot-added.
    full = parse_domain(max_memory_xml(hostdevs(1) + dimm, slots=1))
    assert full.hotpluggable_memory == 0
    assert parse_domain(domain_xml(hostdevs(1))).hotpluggable_memory == 0


def test_estimate_of_64g_max_16g_gpu_recommends_at_least_64g(
        tmp_path: Path, pinned_host_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    xml = tmp_path / "mm.xml"
    xml.write_bytes(max_memory_xml())
    assert main(["estimate", "--xml", str(xml), "--host-facts", str(pinned_host_file),
                 "--mode", "strict", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["recommended_hard_limit_bytes"] >= 64 * GiB
    (item,) = [i for i in doc["items"] if i.get("hotplug")]
    assert item["source"] == "hot-pluggable memory up to maxMemory"
    assert item["bytes"] == 48 * GiB and item["containers"] == 1
    assert doc["hotplug_reserve_bytes"] == {"memory": 48 * GiB, "vfio_devices": 0}
    # The requirement at start is what is mapped at start: 16 GiB and the firmware.
    assert 16 * GiB < doc["required_bytes"]["strict"] < 16 * GiB + 4 * MiB
    # libvirt's own formula is untouched: 1 x <memory> + 1 GiB, maxMemory ignored on x86.
    assert doc["baselines"]["libvirt"]["bytes"] == 17 * GiB
    assert doc["verdict"] == "fits"
    assert main(["estimate", "--xml", str(xml), "--host-facts", str(pinned_host_file)]) == 0
    text = capsys.readouterr().out
    assert "hot-pluggable memory up to maxMemory" in text and "hotplug    reserve 48 GiB" in text


def test_the_requirement_at_start_leaves_out_maxmemory(pinned_host: HostFacts) -> None:
    """Decision: the verdict (start / refuse) is on what is mapped at start. libvirt
    starts this VM with 17 GiB and grows the limit itself at each DIMM hot-add, so
    refusing it for memory it might hot-add would be worse than libvirt."""
    r = assess(parse_domain(max_memory_xml()), pinned_host, STRICT)
    assert r.verdict.fit.value == "fits" and r.verdict.limit.bytes == 17 * GiB
    assert r.verdict.memory_reserve == 48 * GiB
    assert r.verdict.recommended_hard_limit >= r.verdict.required + 48 * GiB
    # The same with a hard_limit that covers the 16 GiB but not 64: it starts (fits),
    # and check warns that a hot-added DIMM needs attach-device.
    held = parse_domain(max_memory_xml(memtune="<memtune><hard_limit unit='GiB'>17"
                                               "</hard_limit></memtune>"))
    r = assess(held, pinned_host, STRICT)
    assert r.verdict.fit.value == "fits"
    (w,) = hotplug.warnings(r)
    assert w.kind == "memory" and w.limit == 17 * GiB and w.needed > 64 * GiB
    assert "attach-device" in w.message


def test_the_hook_starts_a_maxmemory_vm_libvirt_starts_and_its_remedy_covers_maxmemory(
        tmp_path: Path, pinned_host_file: Path) -> None:
    policy = tmp_path / "policy.xml"
    policy.write_text('<policy xmlns="urn:memlock-guard:policy:1"><mode>strict</mode>'
                      f"<audit-log>{tmp_path / 'a.jsonl'}</audit-log></policy>")

    def run(xml: bytes) -> tuple[int, str]:
        err = io.StringIO()
        code = hook.run(["vm", "prepare", "begin", "-"], stdin=io.BytesIO(xml),
                        stdout=io.StringIO(), stderr=err, policy_path=str(policy),
                        facts_path=str(pinned_host_file), use_syslog=False)
        return code, err.getvalue()

    assert run(max_memory_xml()) == (0, "")
    # Short at start (two GPUs behind a vIOMMU, a hard_limit for one): refused, and the
    # remedy names room for memory up to maxMemory.
    short = max_memory_xml(hostdevs(2) + "<iommu model='intel'/>",
                           memtune="<memtune><hard_limit unit='GiB'>17</hard_limit></memtune>")
    code, err = run(short)
    assert code == 1 and "memory hot-added up to maxMemory" in err
    kib = int(err.split("--hard-limit ")[1].split()[0])
    assert kib * KiB >= 2 * 64 * GiB  # two containers, each up to maxMemory


def test_apply_writes_room_for_maxmemory(pinned_host: HostFacts) -> None:
    xml = max_memory_xml(hostdevs(2) + "<iommu model='intel'/>").decode()
    report = assess(parse_domain(xml.encode()), pinned_host,
                    Settings(mode=Mode.STRICT, libvirt_version=(8, 0, 0)))
    res = ap.apply_to_xml(xml, report)
    assert res.plan.action is ap.Action.RAISE
    assert res.plan.new_hard_limit is not None and res.plan.new_hard_limit >= 2 * 64 * GiB
    assert "for memory up to maxMemory" in res.plan.reason


def test_libvirts_formula_ignores_maxmemory_on_x86() -> None:
    plain = parse_domain(domain_xml(hostdevs(1), memory="16", unit="GiB", vcpus=4,
                                    extra=NUMA16))
    with_max = parse_domain(max_memory_xml())
    for v in ((8, 0, 0), (9, 0, 0), (12, 2, 0)):
        assert libvirt_limit(with_max, v).bytes == libvirt_limit(plain, v).bytes == 17 * GiB


def test_a_ledger_without_hotplug_items_keeps_its_digest(pinned_host: HostFacts) -> None:
    """Limits applied before this version stay recognised as ours."""
    import hashlib

    r = assess(parse_domain(domain_xml(hostdevs(1))), pinned_host, STRICT)
    items = [{k: (v.value if hasattr(v, "value") else v) for k, v in i._asdict().items()
              if k not in ("note", "mapping", "hotplug")} for i in r.ledger.items]
    blob = json.dumps({"containers": r.ledger.containers, "items": items},
                      sort_keys=True, separators=(",", ":"))
    assert ap.ledger_digest(r.ledger) == "sha256:" + hashlib.sha256(blob.encode()).hexdigest()
    mm = assess(parse_domain(max_memory_xml()), pinned_host, STRICT)
    assert ap.ledger_digest(mm.ledger) != ap.ledger_digest(
        mm.ledger._replace(items=tuple(i for i in mm.ledger.items if not i.hotplug)))


# -- the policy's VFIO hotplug reserve ------------------------------------------------------

def reserve_policy(n: int) -> Settings:
    p = pol.parse(f'<policy xmlns="urn:memlock-guard:policy:1"><mode>strict</mode>'
                  f"<hotplug-reserve><vfio-devices>{n}</vfio-devices></hotplug-reserve>"
                  f"</policy>".encode())
    from memlock_guard.policy.model import to_settings

    return to_settings(p, libvirt_version=(9, 0, 0))


def test_vfio_reserve_behind_a_viommu_is_a_container_per_device(
        pinned_host: HostFacts) -> None:
    d = parse_domain(VIOMMU_ONE_GPU)
    base = assess(d, pinned_host, reserve_policy(0)).verdict
    two = assess(d, pinned_host, reserve_policy(2)).verdict
    one_container = base.required  # one GPU today: one container
    assert two.vfio_reserve == 2 * one_container
    margin = 64 * MiB
    assert two.recommended_hard_limit == -(-(3 * one_container + margin) // MiB) * MiB
    assert base.recommended_hard_limit == -(-(base.footprint + margin) // MiB) * MiB
    assert two.fit is base.fit  # never part of the verdict


def test_vfio_reserve_without_viommu(pinned_host: HostFacts) -> None:
    # Hot-added devices join the shared container: nothing more to pin...
    d = parse_domain(domain_xml(hostdevs(1), memory="4", unit="GiB"))
    assert assess(d, pinned_host, reserve_policy(3)).verdict.vfio_reserve == 0
    # ...unless there is none yet: the first VFIO device opens one.
    bare = parse_domain(domain_xml("", memory="4", unit="GiB"))
    v = assess(bare, pinned_host, reserve_policy(3)).verdict
    assert 4 * GiB <= v.vfio_reserve < 4 * GiB + 4 * MiB


def test_apply_raises_its_own_limit_when_the_policy_asks_for_a_reserve(
        pinned_host: HostFacts) -> None:
    xml = VIOMMU_ONE_GPU.decode().replace("<memtune><hard_limit unit='GiB'>5</hard_limit>"
                                          "</memtune>", "")
    xml = xml.replace("<vcpu>", "<memtune><hard_limit unit='KiB'>1</hard_limit></memtune>"
                                "<vcpu>")
    first = ap.apply_to_xml(xml, assess(parse_domain(xml.encode()), pinned_host,
                                        reserve_policy(0)))
    assert first.plan.action is ap.Action.RAISE
    later = assess(parse_domain(first.new_xml.encode()), pinned_host, reserve_policy(1))
    again = ap.apply_to_xml(first.new_xml, later)
    assert again.plan.ours and again.plan.action is ap.Action.RAISE
    assert again.plan.reason.startswith("the recommendation grew since memlock-guard set")
    assert again.plan.new_hard_limit == later.verdict.recommended_hard_limit


# -- the warnings ---------------------------------------------------------------------------

def test_warns_when_a_hard_limit_fits_one_gpu_but_not_a_second(
        pinned_host: HostFacts) -> None:
    r = assess(parse_domain(VIOMMU_ONE_GPU), pinned_host, STRICT)
    assert r.verdict.fit.value == "fits"
    (w,) = hotplug.warnings(r)
    assert w.kind == "vfio-device" and w.limit == 5 * GiB
    assert 8 * GiB < w.needed < 8 * GiB + 8 * MiB
    assert "memlock-guard attach-device" in w.message
    # Room for a second one: no warning.
    roomy = VIOMMU_ONE_GPU.replace(b">5</hard_limit>", b">9</hard_limit>")
    assert hotplug.warnings(assess(parse_domain(roomy), pinned_host, STRICT)) == ()


@pytest.mark.parametrize("xml", [
    # no hard_limit: libvirt's formula grows by itself at hotplug
    domain_xml(hostdevs(1) + "<iommu model='intel'/>", memory="4", unit="GiB"),
    # no vIOMMU: a second device joins the container
    domain_xml(hostdevs(1), memory="4", unit="GiB",
               extra="<memtune><hard_limit unit='GiB'>5</hard_limit></memtune>"),
    # nothing pins memory, so hot-added memory needs no locked memory either
    max_memory_xml("", memtune="<memtune><hard_limit unit='GiB'>17</hard_limit></memtune>"),
])
def test_no_warning_where_libvirt_or_the_kernel_needs_no_room(
        xml: bytes, pinned_host: HostFacts) -> None:
    assert hotplug.warnings(assess(parse_domain(xml), pinned_host, STRICT)) == ()


# -- the XML edits --------------------------------------------------------------------------

def test_raised_memtune_never_lowers_and_keeps_the_swap_allowance() -> None:
    assert raised_memtune(8 * GiB, None, 4 * GiB) is None
    assert raised_memtune(None, None, 4 * GiB + 1) == (4 * GiB + KiB, None)
    assert raised_memtune(4 * GiB, 5 * GiB, 8 * GiB) == (8 * GiB, 9 * GiB)
    assert raised_memtune(4 * GiB, 16 * GiB, 8 * GiB) == (8 * GiB, None)


def test_a_memory_device_added_without_numa_grows_memory_as_libvirt_does() -> None:
    root = xmlsafe.parse(domain_xml("", memory="1", unit="GiB",
                                    extra="<maxMemory slots='2' unit='GiB'>4</maxMemory>"),
                         what="t")
    dimm = xmlsafe.parse(b"<memory model='dimm'><target><size unit='MiB'>512</size>"
                         b"</target></memory>", what="d")
    add_device(root, dimm)
    from lxml import etree

    d = parse_domain(etree.tostring(root))
    assert d.memory == 1 * GiB + 512 * MiB and d.hotpluggable_memory == 2 * GiB + 512 * MiB
    assert remove_device(root, dimm)
    assert parse_domain(etree.tostring(root)).memory == 1 * GiB
    assert not remove_device(root, dimm)
