"""iommufd: the backend and accounting mode in the ledger, and the per-uid sum that user
accounting is judged against (the pure rule, and the hook's reading of libvirt's status
files and /proc).

libvirt 9.0 (the daemon here) drops <iommufd> and <driver iommufd=> when it defines a
domain, so no running VM here can be under iommufd accounting: the status files below
are a real libvirt 9.0 status file (tests/data/status/) with those elements put in, as
libvirt 12.2 writes them, and the processes are real ones started by the test.
"""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from memlock_guard.accounting import pins
from memlock_guard.accounting.backend import PROCESS, USER, backend_of
from memlock_guard.accounting.modes import Mode
from memlock_guard.accounting.report import Settings, assess
from memlock_guard.baselines.libvirt import libvirt_limit
from memlock_guard.domain import parse_domain
from memlock_guard.hook import entry as hook
from memlock_guard.hook import pins as hook_pins
from memlock_guard.host import sources
from memlock_guard.host.facts import HostFacts

from ..conftest import ROOT
from .builders import GiB, MiB, domain_xml

STRICT = Settings(mode=Mode.STRICT, libvirt_version=(12, 2, 0))
STATUS = (ROOT / "tests" / "data" / "status" / "libvirt-9.0-running.xml").read_text()


def hostdev(bus: int, iommufd: str | None = None) -> str:
    driver = f"<driver iommufd='{iommufd}'/>" if iommufd else ""
    return (f"<hostdev mode='subsystem' type='pci' managed='no'>{driver}<source>"
            f"<address domain='0x0000' bus='0x{bus:02x}' slot='0x00' function='0x0'/>"
            f"</source></hostdev>")


def fd_domain(devices: str, *, fdgroup: str | None = "iommu", extra: str = "",
              name: str = "cand", memtune_gib: int | None = None) -> bytes:
    attrs = f" fdgroup='{fdgroup}'" if fdgroup else ""
    memtune = (f"<memtune><hard_limit unit='GiB'>{memtune_gib}</hard_limit></memtune>"
               if memtune_gib else "")
    return domain_xml(devices, memory="4", unit="GiB", name=name,
                      extra=f"<iommufd enabled='yes'{attrs}/>{memtune}{extra}")


# -- the backend and accounting mode ----------------------------------------------------

def test_backend_and_accounting_mode_from_the_xml() -> None:
    assert backend_of(parse_domain(domain_xml(""))).name == "none"
    t1 = backend_of(parse_domain(domain_xml(hostdev(5))))
    assert (t1.name, t1.accounting) == ("vfio-type1", PROCESS)
    # Per device (libvirt 12.1): libvirt opens /dev/iommu and sets process accounting.
    own = backend_of(parse_domain(domain_xml(hostdev(5, "yes"))))
    assert (own.name, own.accounting, own.fdgroup) == ("iommufd", PROCESS, None)
    # Domain-level with a descriptor passed in: the kernel's default, user accounting.
    passed = backend_of(parse_domain(fd_domain(hostdev(5))))
    assert (passed.name, passed.accounting, passed.fdgroup) == ("iommufd", USER,
                                                                "iommu")
    # A device may opt out of the domain-level default.
    mixed = parse_domain(fd_domain(hostdev(5) + hostdev(6, "no")))
    assert mixed.iommufd_devices == ("0000:05:00.0",)
    assert backend_of(mixed).name == "vfio-type1+iommufd"
    assert backend_of(parse_domain(fd_domain(hostdev(5, "no")))).name == "vfio-type1"


def test_a_type1_container_and_an_ioas_never_share(pinned_host: HostFacts) -> None:
    mixed = parse_domain(fd_domain(hostdev(5) + hostdev(6, "no")))
    r = assess(mixed, pinned_host, STRICT)
    assert r.ledger.containers == 2
    assert r.ledger.container_reasons == ("VFIO: one container shared by 1 device(s)",
                                          "iommufd: one IOAS shared by 1 device(s)")
    # libvirt's formula has no iommufd branch (12.3-dev): one factor for both.
    assert libvirt_limit(mixed, (12, 2, 0)).bytes == 4 * GiB + 1 * GiB
    assert r.verdict.fit.value == "short"
    shared = parse_domain(fd_domain(hostdev(5) + hostdev(6)))
    assert assess(shared, pinned_host, STRICT).ledger.containers == 1
    behind = parse_domain(fd_domain(hostdev(5) + hostdev(6) + "<iommu model='intel'/>"))
    assert assess(behind, pinned_host, STRICT).ledger.container_reasons == (
        "iommufd 0000:05:00.0: own IOAS (vIOMMU)", "iommufd 0000:06:00.0: own IOAS (vIOMMU)")


def test_the_report_states_backend_and_accounting(
        tmp_path: Path, pinned_host_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from memlock_guard.cli import main

    f = tmp_path / "d.xml"
    f.write_bytes(fd_domain(hostdev(5)))
    assert main(["estimate", "--xml", str(f), "--host-facts", str(pinned_host_file),
                 "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["backend"]["name"] == "iommufd" and doc["backend"]["accounting"] == "user"
    assert doc["backend"]["fdgroup"] == "iommu"
    assert main(["estimate", "--xml", str(f), "--host-facts", str(pinned_host_file)]) == 0
    assert "backend: iommufd, user accounting (the iommufd descriptor is passed in" \
        in capsys.readouterr().out


# -- the per-uid sum: the rule ----------------------------------------------------------------

def vm(name: str, *, uid: int | None = 999, default: bool = True, user: bool = True,
       estimate: int = 4 * GiB, other_locked: bool = False, pin: int | None = None,
       lck: int | None = None) -> pins.RunningVM:
    return pins.RunningVM(name, f"uuid-{name}", uid, default, user, estimate, other_locked,
                          pin, lck)


def test_what_one_running_vm_charges_to_its_user() -> None:
    assert pins.charge(vm("a", user=False, pin=GiB)) == 0  # process accounting
    assert pins.charge(vm("a")) == 4 * GiB  # nothing measured: its ledger
    assert pins.charge(vm("a", pin=GiB, lck=0)) == GiB  # measured: VmPin
    # VmLck holding the pins too: its opener chose process accounting after all.
    assert pins.charge(vm("a", pin=GiB, lck=GiB)) == 0
    # ...unless <locked/> or NVMe put other pages in VmLck: then it cannot be told.
    assert pins.charge(vm("a", pin=GiB, lck=2 * GiB, other_locked=True)) == GiB
    assert pins.charge(vm("a", pin=0, lck=0)) == 0


def test_only_the_same_uid_adds_up() -> None:
    cand = parse_domain(fd_domain(hostdev(5)))  # no static label: qemu.conf's user
    running = [vm("a", pin=GiB, lck=0), vm("b", uid=107, default=False, pin=2 * GiB, lck=0),
               vm("c", uid=None, default=False, pin=3 * GiB, lck=0)]
    # a: the default user; b: another uid; c: unknown uid, so counted.
    assert pins.uid_pinned(cand, None, running) == 4 * GiB
    static = parse_domain(fd_domain(hostdev(5), extra="<seclabel type='static' model='dac' "
                                                      "relabel='yes'><label>+107:+107</label>"
                                                      "</seclabel>"))
    assert static.dac_static and static.dac_user == "+107"
    assert pins.uid_pinned(static, 107, running) == 5 * GiB  # b and c
    # The candidate itself (a running VM judged by check) never counts.
    me = vm("cand", pin=GiB, lck=0)._replace(uuid=cand.uuid)
    assert pins.uid_pinned(cand, None, [me]) == 0


def test_user_accounting_judges_the_start_against_the_sum(pinned_host: HostFacts) -> None:
    d = parse_domain(fd_domain(hostdev(5), memtune_gib=6))
    alone = assess(d, pinned_host, STRICT).verdict
    assert alone.fit.value == "fits"
    crowded = assess(d, pinned_host, STRICT, uid_pinned=3 * GiB).verdict
    assert crowded.fit.value == "short" and crowded.uid_pinned == 3 * GiB
    assert crowded.headroom == 6 * GiB - crowded.required - 3 * GiB
    assert crowded.recommended_hard_limit >= crowded.required + 3 * GiB
    # A domain under process accounting ignores the others entirely.
    t1 = parse_domain(fd_domain(hostdev(5), fdgroup=None, memtune_gib=6))
    assert assess(t1, pinned_host, STRICT, uid_pinned=3 * GiB).verdict.uid_pinned == 0


# -- the hook: libvirt's status files and /proc ---------------------------------------------

def status_file(name: str, uuid: str, pid: int, *, iommufd: bool = True) -> str:
    text = STATUS.replace("<name>rs13-r1</name>", f"<name>{name}</name>")
    text = text.replace("2448ce88-f485-4606-9bc5-54f7d33d54c1", uuid)
    text = text.replace("pid='21604'", f"pid='{pid}'")
    if iommufd:
        text = text.replace("    <vcpu placement", "    <iommufd enabled='yes' fdgroup="
                                                  "'iommu'/>\n    <vcpu placement", 1)
        text = text.replace("      <memballoon", hostdev(7) + "\n      <memballoon", 1)
    return text


@pytest.fixture
def guests(tmp_path: Path) -> Iterator[dict[str, int]]:
    """Real processes whose command line names a guest, as libvirt's QEMU does."""
    procs = {}
    for name in ("vm-a", "vm-b"):
        procs[name] = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(120)", "-name",
             f"guest={name},debug-threads=on"])
    import time

    # Popen can return before the child's exec is visible in /proc (empty cmdline):
    # wait until each names its guest, as a running QEMU does.
    deadline = time.monotonic() + 30
    for name, p in procs.items():
        while b"guest=" + name.encode() not in Path(f"/proc/{p.pid}/cmdline").read_bytes():
            assert time.monotonic() < deadline, f"{name}: the process never started"
            time.sleep(0.01)
    yield {n: p.pid for n, p in procs.items()}
    for p in procs.values():
        p.kill()
        p.wait()


def fake_proc(tmp_path: Path, pid: int, name: str, pin_kib: int, lck_kib: int) -> Path:
    """A /proc tree for one pid, in /proc's own format, with a VmPin no process here can
    have (nothing on this machine pins pages)."""
    proc = tmp_path / "proc"
    (proc / str(pid)).mkdir(parents=True, exist_ok=True)
    real = Path(f"/proc/{pid}/status").read_text()
    lines = [f"VmPin:\t{pin_kib:8d} kB" if line.startswith("VmPin:")
             else f"VmLck:\t{lck_kib:8d} kB" if line.startswith("VmLck:") else line
             for line in real.splitlines()]
    (proc / str(pid) / "status").write_text("\n".join(lines) + "\n")
    (proc / str(pid) / "cmdline").write_bytes(Path(f"/proc/{pid}/cmdline").read_bytes())
    return proc


def test_the_hook_reads_real_processes(tmp_path: Path, guests: dict[str, int],
                                       pinned_host: HostFacts) -> None:
    status = tmp_path / "status"
    status.mkdir()
    (status / "vm-a.xml").write_text(status_file("vm-a", "a" * 8 + "-0000-4000-8000-"
                                                 + "0" * 12, guests["vm-a"]))
    (status / "vm-b.xml").write_text(status_file("vm-b", "b" * 8 + "-0000-4000-8000-"
                                                 + "0" * 12, guests["vm-b"], iommufd=False))
    # A status file left behind by a VM that is gone: its pid is no guest.
    (status / "gone.xml").write_text(status_file("gone", "c" * 8 + "-0000-4000-8000-"
                                                 + "0" * 12, 1))
    found = {v.name: v for v in hook_pins.running_vms(str(status), pinned_host)}
    assert set(found) == {"vm-a", "vm-b"}
    a, b = found["vm-a"], found["vm-b"]
    assert a.user_charged and not b.user_charged
    assert (a.uid, a.default_user) == (999, True)  # +999:+994, generated
    assert a.vm_pin == 0 and a.vm_lck == 0  # real /proc: nothing pinned here
    assert 1 * GiB <= a.estimate < 1 * GiB + 4 * MiB  # one IOAS over 1 GiB
    cand = parse_domain(fd_domain(hostdev(5)))
    assert hook_pins.uid_pinned_now(cand, pinned_host, status_dir=str(status)) == 0


def test_the_hook_refuses_a_start_that_the_uids_pins_leave_no_room_for(
        tmp_path: Path, guests: dict[str, int], pinned_host_file: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    status = tmp_path / "status"
    status.mkdir()
    uuid = "a" * 8 + "-0000-4000-8000-" + "0" * 12
    (status / "vm-a.xml").write_text(status_file("vm-a", uuid, guests["vm-a"]))
    proc = fake_proc(tmp_path, guests["vm-a"], "vm-a", pin_kib=3 * 1024 * 1024, lck_kib=0)
    monkeypatch.setattr(sources, "QEMU_STATUS_DIR", str(status))
    monkeypatch.setattr(hook_pins, "PROC", str(proc))
    policy = tmp_path / "policy.xml"
    policy.write_text('<policy xmlns="urn:memlock-guard:policy:1"><mode>strict</mode>'
                      f"<audit-log>{tmp_path / 'a.jsonl'}</audit-log></policy>")
    cache = tmp_path / "cache"

    def start(xml: bytes) -> tuple[int, str]:
        err = io.StringIO()
        code = hook.run(["cand", "prepare", "begin", "-"], stdin=io.BytesIO(xml),
                        stdout=io.StringIO(), stderr=err, policy_path=str(policy),
                        facts_path=str(pinned_host_file), use_syslog=False,
                        cache_dir=str(cache))
        return code, err.getvalue()

    # 4 GiB + firmware of its own fits under 6 GiB, but not with vm-a's 3 GiB on top.
    code, err = start(fd_domain(hostdev(5), memtune_gib=6))
    assert code == 1
    assert "on top of the 3 GiB that the other QEMUs of its uid already pin" in err
    # Such a decision rests on what runs now: never replayed from the decision cache.
    assert [p.name for p in cache.iterdir()] == [hook_pins.CACHE_NAME]
    # Under process accounting (libvirt opens /dev/iommu itself) the others do not count.
    assert start(fd_domain(hostdev(5), fdgroup=None, memtune_gib=6)) == (0, "")
    # vm-a's opener chose process accounting: its pins are in VmLck too, so they are its own.
    fake_proc(tmp_path, guests["vm-a"], "vm-a", pin_kib=3 * 1024 * 1024,
              lck_kib=3 * 1024 * 1024)
    assert start(fd_domain(hostdev(5), memtune_gib=6)) == (0, "")


def test_status_records_are_cached_by_file_identity(
        tmp_path: Path, guests: dict[str, int], pinned_host: HostFacts,
        monkeypatch: pytest.MonkeyPatch) -> None:
    status = tmp_path / "status"
    status.mkdir()
    f = status / "vm-a.xml"
    f.write_text(status_file("vm-a", "a" * 8 + "-0000-4000-8000-" + "0" * 12,
                             guests["vm-a"]))
    parsed: list[str] = []
    real = hook_pins._record

    def counting(path: str, key: list[int], host: HostFacts) -> dict[str, object]:
        parsed.append(path)
        return real(path, key, host)

    monkeypatch.setattr(hook_pins, "_record", counting)
    cache = str(tmp_path / "cache")
    for _ in range(3):
        assert [v.name for v in hook_pins.running_vms(str(status), pinned_host,
                                                      cache_dir=cache)] == ["vm-a"]
    assert parsed == [str(f)]  # parsed once, then served from the cache
    # libvirt rewrites the file (a hotplug, a memtune): parsed again.
    f.write_text(f.read_text().replace("<memory unit='KiB'>1048576</memory>",
                                       "<memory unit='KiB'>2097152</memory>"))
    (vm_a,) = hook_pins.running_vms(str(status), pinned_host, cache_dir=cache)
    assert parsed == [str(f), str(f)] and vm_a.estimate >= 2 * GiB
    f.unlink()
    assert list(hook_pins.running_vms(str(status), pinned_host, cache_dir=cache)) == []


def test_process_pins_reads_proc_status() -> None:
    import os

    pin, lck = sources.process_pins(os.getpid())
    assert pin == 0 and lck == 0  # nothing on this machine pins pages
    assert sources.process_pins(2 ** 22 + 12345) == (None, None)
    assert sources.resolve_user("+64055") == 64055
    assert sources.resolve_user("root") == 0
    assert sources.resolve_user("no-such-user-mg") is None


# -- check: the running domains through libvirt ----------------------------------------------

def test_check_reads_the_running_domains_live_xml(tmp_path: Path,
                                                  pinned_host: HostFacts) -> None:
    pytest.importorskip("libvirt")
    from memlock_guard.libvirtd.pins import LivePins
    from memlock_guard.libvirtd.reconcile import Judge
    from memlock_guard.policy import model as policy_model

    from .testdriver import open_test_driver

    td = open_test_driver(tmp_path)
    try:
        xml = domain_xml(hostdev(5), virt="test", name="mgt-pins",
                         extra="<seclabel type='static' model='dac' relabel='no'>"
                               "<label>+107:+107</label></seclabel>").decode()
        td.define(xml).create()
        judge = Judge(policy=policy_model.DEFAULTS, host=pinned_host, probe_files=False)
        live = LivePins(td.conn, judge)
        found = {v.name: v for v in live.running()}
        # test:///default's own running "test" domain, and ours with its static label
        assert {"test", "mgt-pins"} <= set(found)
        mine = found["mgt-pins"]
        assert (mine.uid, mine.default_user, mine.user_charged) == (107, False, False)
        # A domain under process accounting is judged as it is, nothing added.
        report, _ = judge(xml)
        assert live.judge(xml, report) is report
        # Under user accounting it is judged again with the sum (0: libvirt 9.0 keeps no
        # <iommufd>, so no running domain here is user-charged).
        cand = fd_domain(hostdev(6), name="mgt-cand").decode()
        cand_report, _ = judge(cand)
        assert cand_report.ledger.backend is not None
        assert cand_report.ledger.backend.user_accounting
        assert live.judge(cand, cand_report).verdict.uid_pinned == 0
    finally:
        td.cleanup()
