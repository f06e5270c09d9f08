"""The installed hook against a real libvirtd + QEMU, driven through virsh only.

The hook is installed with `memlock-guard install-hook` before the daemon (re)starts
(the ``hooked_libvirtd`` fixture). These machines lack CAP_SYS_RESOURCE and VFIO, so:
- a fake PCI hostdev passes the prepare hook and then fails with "host doesn't support
  passthrough": a failure that is not the hook's;
- a domain whose memlock limit is above 8 MiB fails with "cannot limit locked memory of
  process ... to N", and N is the limit libvirt applied: that is how the restore test
  sees which XML libvirt used.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..conftest import PINNED_HOST
from .conftest import POLICY_NS, HookedLibvirtd, Libvirtd, domain_type, unique_name

pytestmark = pytest.mark.e2e

HOOK_FAILED = "Hook script execution failed"
NOT_OURS = "host doesn't support passthrough"

# 1 GiB, q35, a virtio NIC on user networking (its option ROM has a never-written
# tail, so strict and tolerant accounting differ) and a PCI device that does not exist.
PASSTHROUGH = """\
<domain type='{type}'>
  <name>{name}</name>
  <memory unit='MiB'>1024</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <interface type='user'><model type='virtio'/></interface>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source><address domain='0x0000' bus='0x7e' slot='0x1f' function='0x7'/></source>
    </hostdev>
  </devices>
</domain>
"""

# Nothing pins memory: libvirt sets no limit and QEMU really runs here.
PLAIN = """\
<domain type='{type}'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <interface type='user'><mac address='{mac}'/><model type='virtio'/></interface>
  </devices>
</domain>
"""


@pytest.fixture
def hooked(hooked_libvirtd: HookedLibvirtd, libvirtd: Libvirtd) -> Iterator[HookedLibvirtd]:
    """The hooked daemon with the default test policy; domains cleaned up per test."""
    hooked_libvirtd.set_policy(hooked_libvirtd.policy_xml())
    yield hooked_libvirtd
    hooked_libvirtd.set_policy(hooked_libvirtd.policy_xml())


def estimate(hooked: HookedLibvirtd, name: str) -> dict[str, Any]:
    """memlock-guard's own numbers for the defined domain (what the hook will judge)."""
    xml = hooked.virsh("dumpxml", name, "--inactive").stdout
    p = subprocess.run([sys.executable, "-m", "memlock_guard.cli", "estimate", "--xml", "-",
                        "--format", "json"], input=xml, capture_output=True, text=True,
                       timeout=120, check=True)
    data: dict[str, Any] = json.loads(p.stdout)
    return data


def decisions(hooked: HookedLibvirtd, since: int, name: str) -> list[dict[str, Any]]:
    return [r for r in hooked.audit_lines(since) if r["domain"] == name]


def between_modes(hooked: HookedLibvirtd) -> tuple[str, int, int]:
    """A passthrough domain whose hard_limit covers tolerant accounting, not strict."""
    name = hooked.define(PASSTHROUGH.format(type=domain_type(), name=unique_name("pt")))
    need = estimate(hooked, name)["required_bytes"]
    strict, tolerant = need["strict"], need["tolerant"]
    kib = -(-tolerant // 1024)
    assert kib * 1024 < strict, f"strict {strict} and tolerant {tolerant} share a KiB"
    hooked.virsh("memtune", name, "--hard-limit", str(kib), "--config")
    return name, tolerant, strict


def test_a_short_passthrough_domain_is_refused_with_the_paragraph(hooked: HookedLibvirtd):
    hooked.set_policy(hooked.policy_xml("<mode>strict</mode>"))
    name, _tolerant, strict = between_modes(hooked)
    mark = len(hooked.audit_lines())
    p = hooked.virsh("start", name, check=False)
    assert p.returncode != 0
    err = " ".join(p.stderr.split())
    assert HOOK_FAILED in err and NOT_OURS not in err
    assert f"memlock-guard refused the start: domain '{name}' needs" in err
    assert f"({strict} bytes)" in err and "strict accounting (configured)" in err
    assert "from hard_limit" in err
    (rec,) = decisions(hooked, mark, name)
    kib = rec["recommended_hard_limit"] // 1024
    assert f"Remedy: virsh memtune {name} --hard-limit {kib} --config" in err
    assert f"memlock-guard apply {name}" in err
    assert (rec["op"], rec["action"], rec["verdict"]) == ("prepare", "refuse", "short")
    assert hooked.virsh("domstate", name).stdout.strip() == "shut off"


def test_tolerant_accounting_lets_the_same_domain_reach_the_device(hooked: HookedLibvirtd):
    hooked.set_policy(hooked.policy_xml(
        "<mode>tolerant</mode><zero-page-allowance>unlimited</zero-page-allowance>"))
    name, tolerant, _strict = between_modes(hooked)
    mark = len(hooked.audit_lines())
    p = hooked.virsh("start", name, check=False)
    assert p.returncode != 0 and NOT_OURS in p.stderr and HOOK_FAILED not in p.stderr
    (rec,) = decisions(hooked, mark, name)
    assert (rec["action"], rec["required"]) == ("allow", tolerant)


def test_warn_lets_the_start_go_on_to_fail_for_the_missing_device(hooked: HookedLibvirtd):
    hooked.set_policy(hooked.policy_xml("<mode>strict</mode><on-shortfall>warn</on-shortfall>"))
    name, _tolerant, _strict = between_modes(hooked)
    mark = len(hooked.audit_lines())
    p = hooked.virsh("start", name, check=False)
    assert p.returncode != 0
    assert NOT_OURS in p.stderr and HOOK_FAILED not in p.stderr
    (rec,) = decisions(hooked, mark, name)
    assert (rec["action"], rec["verdict"]) == ("warn", "short")
    assert "virsh memtune" in rec["message"]


def test_a_domain_can_warn_for_itself_through_virsh_metadata(hooked: HookedLibvirtd):
    hooked.set_policy(hooked.policy_xml("<mode>strict</mode>"))
    name, _tolerant, _strict = between_modes(hooked)
    hooked.virsh("metadata", name, "--uri", POLICY_NS, "--key", "mg", "--config",
                 "--set", "<policy><on-shortfall>warn</on-shortfall></policy>")
    mark = len(hooked.audit_lines())
    p = hooked.virsh("start", name, check=False)
    assert NOT_OURS in p.stderr and HOOK_FAILED not in p.stderr
    (rec,) = decisions(hooked, mark, name)
    assert rec["action"] == "warn" and f"{name}'s <metadata>" in rec["policy"]


def test_a_passthrough_domain_that_fits_is_allowed(hooked: HookedLibvirtd):
    hooked.set_policy(hooked.policy_xml("<mode>strict</mode>"))
    name = hooked.define(PASSTHROUGH.format(type=domain_type(), name=unique_name("fit")))
    mark = len(hooked.audit_lines())
    p = hooked.virsh("start", name, check=False)
    assert NOT_OURS in p.stderr and HOOK_FAILED not in p.stderr
    (rec,) = decisions(hooked, mark, name)
    assert (rec["action"], rec["verdict"], rec["limit_source"]) == \
        ("allow", "fits", "libvirt-formula")


def test_a_plain_domain_fits_and_really_starts(hooked: HookedLibvirtd):
    hooked.set_policy(hooked.policy_xml("<mode>strict</mode>"))
    name = hooked.define(PLAIN.format(type=domain_type(), name=unique_name("plain"),
                                      mac="52:54:00:6d:67:01"))
    mark = len(hooked.audit_lines())
    hooked.virsh("start", name)
    assert hooked.virsh("domstate", name).stdout.strip() == "running"
    (rec,) = decisions(hooked, mark, name)
    assert (rec["action"], rec["verdict"], rec["required"]) == ("allow", "fits", 0)


@pytest.mark.parametrize(("on_error", "starts"), [("allow", True), ("refuse", False)])
def test_a_broken_policy_follows_on_error(hooked: HookedLibvirtd, on_error: str,
                                          starts: bool):
    hooked.set_policy(f'<policy xmlns="{POLICY_NS}"><on-error>{on_error}</on-error>'
                      f"<audit-log>{hooked.audit_path}</audit-log>"
                      f"<mode>strictest</mode></policy>")
    name = hooked.define(PLAIN.format(type=domain_type(), name=unique_name("broken"),
                                      mac="52:54:00:6d:67:02"))
    mark = len(hooked.audit_lines())
    p = hooked.virsh("start", name, check=False)
    if starts:
        assert p.returncode == 0, p.stderr
    else:
        assert p.returncode != 0 and HOOK_FAILED in p.stderr
        assert "could not check" in p.stderr and "<mode> is 'strictest'" in p.stderr
    (rec,) = decisions(hooked, mark, name)
    assert rec["verdict"] == "error" and "strictest" in rec["error"]
    assert rec["action"] == ("allow" if starts else "refuse")


LIMIT_APPLIED = re.compile(r"cannot limit locked memory of process \d+ to (\d+)")


def saved_running_domain(hooked: HookedLibvirtd, tmp: Path) -> tuple[str, Path, str]:
    """Start a plain domain, `virsh save` it, and return (name, image, saved XML)."""
    name = hooked.define(PLAIN.format(type=domain_type(), name=unique_name("save"),
                                      mac="52:54:00:6d:67:03"))
    hooked.virsh("start", name)
    image = tmp / "domain.save"
    hooked.virsh("save", name, str(image))
    return name, image, hooked.virsh("save-image-dumpxml", str(image)).stdout


def pinning_variant(saved: str, device: Path) -> str:
    """The saved XML with its NIC made a vDPA one, and a hard_limit of 64 MiB.

    A domain that pins memory cannot run here (no VFIO, no vDPA), so the restore hands
    libvirt this variant with `virsh restore --xml`. The NIC's type is not part of the
    ABI check, and libvirt only opens the vDPA device before launching QEMU, so the
    restore reaches the memlock limit and shows it in its error.
    """
    variant = saved.replace("<interface type='user'>",
                            f"<interface type='vdpa'>\n      <source dev='{device}'/>", 1)
    assert variant != saved
    return variant.replace("<vcpu", "<memtune>\n    <hard_limit unit='KiB'>65536"
                                    "</hard_limit>\n  </memtune>\n  <vcpu", 1)


@pytest.mark.parametrize("adjust", [True, False])
def test_restore_uses_the_hooks_raised_hard_limit(hooked: HookedLibvirtd, tmp_path: Path,
                                                  adjust: bool):
    body = "<mode>strict</mode>" + ("" if adjust else
                                    "<adjust/><on-shortfall>warn</on-shortfall>")
    hooked.set_policy(hooked.policy_xml(body))
    name, image, saved = saved_running_domain(hooked, tmp_path)
    device = tmp_path / "vhost-vdpa-fake"
    device.touch()
    alt = tmp_path / "restore.xml"
    alt.write_text(pinning_variant(saved, device))
    mark = len(hooked.audit_lines())
    p = hooked.virsh("restore", str(image), "--xml", str(alt), check=False)
    assert p.returncode != 0 and HOOK_FAILED not in p.stderr
    m = LIMIT_APPLIED.search(p.stderr)
    assert m, p.stderr
    applied = int(m.group(1))
    records = decisions(hooked, mark, name)
    restore = next(r for r in records if r["op"] == "restore")
    prepare = next(r for r in records if r["op"] == "prepare")
    if adjust:
        assert restore["action"] == "adjust"
        assert (restore["hard_limit_from"], restore["hard_limit_to"]) == \
            (64 * 1024 * 1024, applied)
        assert applied == restore["recommended_hard_limit"] > 64 * 1024 * 1024
        assert prepare["action"] == "allow" and prepare["limit"] == applied
    else:
        assert restore["action"] == "keep"
        assert applied == 64 * 1024 * 1024
        assert prepare["action"] == "warn"


def test_a_restore_answer_keeps_swap_hard_limit_above_the_new_hard_limit(
        hooked: HookedLibvirtd, tmp_path: Path):
    """The hook's restore XML raises hard_limit past the domain's swap_hard_limit; it
    raises swap_hard_limit with it (keeping the swap allowance), and libvirt accepts the
    definition: libvirt writes the cgroup's memory limit, then the swap limit, and
    cgroup v1 refuses a swap limit below the memory limit."""
    hooked.set_policy(hooked.policy_xml("<mode>strict</mode>"))
    name = unique_name("swap")
    xml = PASSTHROUGH.format(type=domain_type(), name=name).replace(
        "<vcpu>", "<memtune><hard_limit unit='MiB'>64</hard_limit>"
                  "<swap_hard_limit unit='MiB'>96</swap_hard_limit></memtune>\n  <vcpu>", 1)
    hook = Path("/etc/libvirt/hooks/qemu.d/50-memlock-guard")
    p = subprocess.run([str(hook), name, "restore", "begin", "-"], input=xml,
                       capture_output=True, text=True, timeout=60, env={})
    assert p.returncode == 0, p.stderr
    answer = tmp_path / "restore-answer.xml"
    answer.write_text(p.stdout)
    hooked.virsh("define", str(answer))  # libvirt's own validation of what we printed
    hooked.daemon.defined.append(name)
    from lxml import etree

    memtune = etree.fromstring(hooked.virsh("dumpxml", name, "--inactive").stdout.encode()
                               ).find("memtune")
    assert memtune is not None
    hard = int(memtune.findtext("hard_limit") or 0)
    swap = int(memtune.findtext("swap_hard_limit") or 0)
    assert hard > 96 * 1024  # KiB: raised past the old swap_hard_limit
    assert swap - hard == (96 - 64) * 1024  # the operator's 32 MiB of swap, kept


# -- the installed script, many at once ----------------------------------------------------------

KINDS: dict[str, tuple[str, int, str]] = {
    # kind: (op, exit status, audit action)
    "fits": ("prepare", 0, "allow"),
    "short": ("prepare", 1, "refuse"),
    "plain": ("prepare", 0, "allow"),
    "warns": ("prepare", 0, "warn"),
    "broken": ("prepare", 1, "refuse"),
    "adjust": ("restore", 0, "adjust"),
}


def mixed_xml(kind: str, name: str) -> bytes:
    gib = 1024 * 1024
    if kind == "plain":
        return PLAIN.format(type="kvm", name=name, mac="52:54:00:6d:67:04").encode()
    if kind == "broken":
        return f"<domain><name>{name}</name><memory>zero</memory></domain>".encode()
    xml = PASSTHROUGH.format(type="kvm", name=name)
    if kind in ("short", "warns", "adjust"):
        xml = xml.replace("<vcpu>", f"<memtune><hard_limit>{gib}</hard_limit></memtune>"
                                    "<vcpu>", 1)
    if kind == "warns":
        xml = xml.replace("<vcpu>", f'<metadata><mg:policy xmlns:mg="{POLICY_NS}">'
                                    "<mg:on-shortfall>warn</mg:on-shortfall></mg:policy>"
                                    "</metadata><vcpu>", 1)
    return xml.encode()


def test_32_concurrent_hook_runs_decide_right_and_log_whole_lines(tmp_path: Path):
    audit = tmp_path / "audit.jsonl"
    policy = tmp_path / "policy.xml"
    policy.write_text(f'<policy xmlns="{POLICY_NS}"><mode>strict</mode>'
                      f"<on-error>refuse</on-error><audit-log>{audit}</audit-log></policy>")
    subprocess.run([sys.executable, "-m", "memlock_guard.cli", "install-hook",
                    "--hooks-dir", str(tmp_path / "hooks"), "--policy", str(policy),
                    "--facts-cache", str(tmp_path / "facts.json"),
                    "--decision-cache", str(tmp_path / "decisions")],
                   check=True, capture_output=True, timeout=120)
    (tmp_path / "facts.json").write_text(json.dumps(PINNED_HOST))
    script = tmp_path / "hooks" / "qemu.d" / "50-memlock-guard"

    runs = []
    kinds = list(KINDS)
    for i in range(32):
        kind = kinds[i % len(kinds)]
        name = f"vm-{kind}-{i % 3}"  # repeats: runs race to store the same decision
        op = KINDS[kind][0]
        p = subprocess.Popen([str(script), name, op, "begin", "-"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"})
        runs.append((kind, name, p))
    for kind, name, p in runs:  # all 32 are running before any gets its stdin
        assert p.stdin is not None
        p.stdin.write(mixed_xml(kind, name))
        p.stdin.close()
    by_pid = {}
    for kind, name, p in runs:
        assert p.stdout is not None and p.stderr is not None
        out, err = p.stdout.read(), p.stderr.read()  # small: well under a pipe buffer
        p.wait(timeout=120)
        _op, rc, _action = KINDS[kind]
        assert p.returncode == rc, (kind, err)
        assert b"Traceback" not in err and err.count(b"\n") <= 1
        if kind == "adjust":
            assert b"<hard_limit unit=\"KiB\">" in out
        else:
            assert out == b""
        by_pid[p.pid] = (kind, name)

    lines = audit.read_text().splitlines()
    assert len(lines) == 32
    records = [json.loads(line) for line in lines]  # every line whole, valid JSON
    assert {r["pid"] for r in records} == set(by_pid)
    for r in records:
        kind, name = by_pid[r["pid"]]
        op, _rc, action = KINDS[kind]
        assert (r["op"], r["domain"], r["action"]) == (op, name, action), r
        assert r["verdict"] == ("error" if kind == "broken" else
                                "fits" if kind in ("fits", "plain") else "short")


def test_the_hook_never_hangs_libvirtd_on_a_fifo_policy(tmp_path: Path):
    """A policy path that is a FIFO nobody writes must not block the start path."""
    fifo = tmp_path / "policy.xml"
    subprocess.run([sys.executable, "-m", "memlock_guard.cli", "install-hook",
                    "--hooks-dir", str(tmp_path / "hooks"), "--policy", str(fifo),
                    "--facts-cache", str(tmp_path / "facts.json"),
                    "--decision-cache", "none"], check=True, capture_output=True,
                   timeout=120)
    os.mkfifo(fifo)  # after install-hook, which would refuse it
    script = tmp_path / "hooks" / "qemu.d" / "50-memlock-guard"
    t0 = time.monotonic()
    p = subprocess.run([str(script), "vm", "prepare", "begin", "-"],
                       input=PASSTHROUGH.format(type="kvm", name="vm").encode(),
                       capture_output=True, timeout=60)
    assert time.monotonic() - t0 < 30
    assert p.returncode == 0 and b"not a regular file" in p.stderr
