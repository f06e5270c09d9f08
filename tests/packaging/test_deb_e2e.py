"""The .deb on this machine, for real: `apt-get install ./memlock-guard_*.deb`, the packaged
hook refusing a short passthrough domain and letting a fitting one through after a
libvirtd restart, install-hook and uninstall-hook leaving the package's hook alone, an
upgrade from the previous version keeping an edited policy, and `apt-get purge` leaving
nothing of ours behind.

These tests hold the e2e lock (/run/memlock-guard-e2e.lock) from the first install to
the end. Whatever happens, the package is purged, /etc/libvirt/hooks, /etc/memlock-guard
and /var/lib/memlock-guard are put back as they were (an install-hook copy of the hook
from the e2e tests included), and libvirtd is restarted so that it forgets our hook.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ..conftest import ROOT
from ..e2e.conftest import ENV_SCRIPT, LOCK, Libvirtd, domain_type, unique_name
from .conftest import (
    PACKAGE,
    PREVIOUS_POLICY_MARK,
    PREVIOUS_VERSION,
    Built,
    run,
    unavailable,
    version,
)

pytestmark = [pytest.mark.e2e, pytest.mark.packaging]

HOOK = "/etc/libvirt/hooks/qemu.d/50-memlock-guard"
HOOK_TARGET = "/usr/libexec/memlock-guard/qemu-hook"
POLICY = "/etc/memlock-guard/policy.xml"
STATE = "/var/lib/memlock-guard"
LOG_DIR = "/var/log/memlock-guard"
AUDIT = f"{LOG_DIR}/audit.jsonl"
RESTORED = ("/etc/libvirt/hooks", "/etc/memlock-guard", STATE)
HOOK_FAILED = "Hook script execution failed"
NOT_OURS = "host doesn't support passthrough"
# What a root shell on the host has: no venv, no PYTHONPATH.
HOST_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/root"}

# 1 GiB on q35 with a PCI device that does not exist: the hook judges it, and when it
# lets the start go on, libvirt fails on the device ("host doesn't support passthrough").
PASSTHROUGH = """\
<domain type='{type}'>
  <name>{name}</name>
  <memory unit='MiB'>1024</memory>
  {memtune}
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
# Pins nothing: starts for real.
PLAIN = """\
<domain type='{type}'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices><interface type='user'><model type='virtio'/></interface></devices>
</domain>
"""


def apt(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """apt-get as an operator runs it, without prompts (and failing if one came)."""
    return run("apt-get", "-y", "-o", "DPkg::Lock::Timeout=300", *args,
               env={"DEBIAN_FRONTEND": "noninteractive", **(env or {})}, timeout=900,
               check=False)


def dpkg_status() -> tuple[str, str]:
    """dpkg's (status, version) of the package; ('', '') when dpkg never heard of it."""
    p = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Status} ${Version}", PACKAGE],
                       capture_output=True, text=True)
    status, _, ver = p.stdout.partition(" ")
    return (status, ver) if p.returncode == 0 else ("", "")


def installed_version() -> str | None:
    status, ver = dpkg_status()
    return ver if status == "installed" else None


def known_to_dpkg() -> bool:
    """Installed, half-installed, or removed with its conffiles left: purge it."""
    return dpkg_status()[0] not in ("", "not-installed")


def on_host(*cmd: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, env=HOST_ENV, timeout=120,
                          input=stdin)


def holds_lock_already() -> bool:
    """This process took the e2e lock already (the e2e fixtures, session-scoped): taking
    it again through another descriptor would wait for ever."""
    try:
        ino = os.stat(LOCK).st_ino
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 5 and fields[1] == "FLOCK" and \
                        fields[4] == str(os.getpid()) and fields[5].endswith(f":{ino}"):
                    return True
    except OSError:
        pass
    return False


@pytest.fixture(scope="module")
def e2e_locked() -> Iterator[None]:
    if os.geteuid() != 0:
        unavailable("installing the .deb needs root")
    if os.environ.get("MEMLOCK_GUARD_E2E_LOCK_HELD") == "1" or holds_lock_already():
        yield
        return
    fd = os.open(LOCK, os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@dataclass
class Host:
    daemon: Libvirtd
    install: subprocess.CompletedProcess[str]
    pids: tuple[str, str]  # libvirtd's, before and after apt-get install
    log_existed: bool


def libvirtd_pid() -> str:
    return Path("/run/libvirtd.pid").read_text().strip()


def snapshot(dest: Path) -> dict[str, Path | None]:
    saved: dict[str, Path | None] = {}
    for i, path in enumerate(RESTORED):
        if os.path.lexists(path):
            saved[path] = dest / str(i)
            shutil.copytree(path, dest / str(i), symlinks=True)
        else:
            saved[path] = None
    return saved


def restore(saved: dict[str, Path | None]) -> None:
    for path, copy in saved.items():
        if os.path.lexists(path):
            shutil.rmtree(path)
        if copy is not None:
            shutil.copytree(copy, path, symlinks=True)


@pytest.fixture(scope="module")
def host(deb: Built, previous_deb: Built, e2e_locked: None,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    """The .deb installed with apt, then libvirtd restarted (hooks are found at start)."""
    if shutil.which("virsh") is None:
        unavailable("virsh is not installed (run scripts/test.sh)")
    r = subprocess.run(["bash", str(ENV_SCRIPT), "start"], capture_output=True, text=True,
                       timeout=600)
    if r.returncode != 0:
        unavailable(f"libvirt_env.sh start failed: {r.stderr.strip()[-500:]}")
    daemon = Libvirtd()
    if known_to_dpkg():  # left by a run that was killed
        assert apt("purge", PACKAGE).returncode == 0
    saved = snapshot(tmp_path_factory.mktemp("packaging-state"))
    log_existed = os.path.isdir(LOG_DIR)
    try:
        pid = libvirtd_pid()
        p = apt("install", deb.path)
        assert p.returncode == 0, f"apt-get install failed:\n{p.stdout[-3000:]}{p.stderr}"
        pids = (pid, libvirtd_pid())
        daemon.restart()
        yield Host(daemon, p, pids, log_existed)
    finally:
        daemon.cleanup()
        try:
            if known_to_dpkg():
                apt("purge", PACKAGE)
        finally:
            restore(saved)
            if not log_existed:
                shutil.rmtree(LOG_DIR, ignore_errors=True)
            daemon.restart()


@pytest.fixture
def daemon(host: Host) -> Iterator[Libvirtd]:
    yield host.daemon
    host.daemon.cleanup()


def audit_mark() -> int:
    return len(Path(AUDIT).read_text().splitlines()) if os.path.exists(AUDIT) else 0


def decisions(since: int, name: str) -> list[dict[str, Any]]:
    lines = Path(AUDIT).read_text().splitlines()[since:] if os.path.exists(AUDIT) else []
    return [r for r in map(json.loads, filter(None, lines)) if r.get("domain") == name]


def passthrough(daemon: Libvirtd, *, hard_limit_kib: int | None) -> str:
    memtune = ("" if hard_limit_kib is None else
               f"<memtune><hard_limit unit='KiB'>{hard_limit_kib}</hard_limit></memtune>")
    return daemon.define(PASSTHROUGH.format(type=domain_type(), name=unique_name("pkg"),
                                            memtune=memtune))


# -- installed ---------------------------------------------------------------------------

def test_apt_installs_it_with_debians_own_dependencies(host: Host):
    assert installed_version() == version()
    for dep in ("python3-lxml", "python3-pluggy", "python3-libvirt", "python3-tenacity"):
        p = run("dpkg-query", "-W", "-f", "${db:Status-Status}", dep)
        assert p.stdout == "installed", dep
    p = on_host("/usr/bin/python3", "-c", "import memlock_guard; print(memlock_guard.__file__)")
    assert p.stdout.strip() == "/usr/lib/python3/dist-packages/memlock_guard/__init__.py"
    assert on_host("memlock-guard", "--version").stdout.strip() == f"memlock-guard {version()}"
    example = ROOT / "examples" / "gpu-passthrough.xml"
    p = on_host("memlock-guard", "estimate", "--xml", str(example), "--format", "json")
    assert p.returncode == 0 and json.loads(p.stdout)["verdict"] in ("fits", "short"), p.stderr
    # postinst: the host facts cached, one line about restarting the daemon, no restart.
    facts = json.loads(Path(STATE, "host-facts.json").read_text())
    assert facts["libvirt_version"] and facts["qemu_version"], facts
    said = [line for line in host.install.stdout.splitlines()
            if line.startswith("memlock-guard: ")]
    assert said == [f"memlock-guard: restart libvirtd (or virtqemud) before the hook {HOOK} "
                    "takes effect, e.g. 'systemctl restart libvirtd'"], host.install.stdout
    assert host.pids[0] == host.pids[1]  # apt-get install did not restart libvirtd
    assert os.stat(LOG_DIR).st_mode & 0o777 == 0o750
    assert os.path.isfile("/lib/systemd/system/memlock-guard-watch.service")
    assert not os.path.lexists(
        "/etc/systemd/system/multi-user.target.wants/memlock-guard-watch.service")
    assert os.path.isfile("/usr/share/man/man1/memlock-guard-estimate.1.gz")


def test_a_reinstall_does_not_restart_libvirtd_either(deb: Built, host: Host):
    before = libvirtd_pid()
    p = apt("install", "--reinstall", deb.path)
    assert p.returncode == 0, p.stderr
    assert libvirtd_pid() == before
    assert "restart libvirtd (or virtqemud)" in p.stdout


def test_the_packaged_hook_refuses_a_short_passthrough_domain(host: Host, daemon: Libvirtd):
    assert os.readlink(HOOK) == HOOK_TARGET
    assert run("dpkg-query", "-S", HOOK).stdout.startswith(f"{PACKAGE}: ")
    # hard_limit = guest RAM: the ROMs and firmware do not fit, in either accounting.
    name = passthrough(daemon, hard_limit_kib=1024 * 1024)
    mark = audit_mark()
    p = daemon.virsh("start", name, check=False)
    err = " ".join(p.stderr.split())
    assert p.returncode != 0 and HOOK_FAILED in err and NOT_OURS not in err, err
    assert f"{HOOK} {name} prepare begin" in err  # the packaged path, run by libvirtd
    assert f"memlock-guard refused the start: domain '{name}' needs" in err
    assert f"Remedy: virsh memtune {name} --hard-limit" in err
    assert f"memlock-guard apply {name}" in err
    (rec,) = decisions(mark, name)
    assert (rec["op"], rec["action"], rec["verdict"]) == ("prepare", "refuse", "short")
    assert rec["policy"] == POLICY
    assert daemon.virsh("domstate", name).stdout.strip() == "shut off"


def test_the_packaged_hook_lets_a_fitting_domain_through(host: Host, daemon: Libvirtd):
    # No hard_limit: libvirt gives RAM + 1 GiB, which covers it.
    name = passthrough(daemon, hard_limit_kib=None)
    mark = audit_mark()
    p = daemon.virsh("start", name, check=False)
    assert p.returncode != 0 and NOT_OURS in p.stderr and HOOK_FAILED not in p.stderr, p.stderr
    (rec,) = decisions(mark, name)
    assert (rec["action"], rec["verdict"]) == ("allow", "fits")
    # And a domain that pins nothing really starts.
    plain = daemon.define(PLAIN.format(type=domain_type(), name=unique_name("pkg-plain")))
    daemon.virsh("start", plain)
    assert daemon.virsh("domstate", plain).stdout.strip() == "running"


def test_install_hook_and_uninstall_hook_leave_the_packaged_hook_alone(host: Host):
    before = sorted(os.listdir("/etc/libvirt/hooks/qemu.d"))
    for args in ([], ["--as-main-script"]):
        p = on_host("memlock-guard", "install-hook", *args)
        assert p.returncode == 0, p.stderr
        assert f"{HOOK} was installed by the {PACKAGE} (dpkg) package" in p.stdout, p.stdout
        assert "not writing a second copy" in p.stdout
        assert os.readlink(HOOK) == HOOK_TARGET
        assert sorted(os.listdir("/etc/libvirt/hooks/qemu.d")) == before
        assert not os.path.lexists("/etc/libvirt/hooks/qemu")
    p = on_host("memlock-guard", "uninstall-hook")
    assert p.returncode == 0, p.stderr
    assert f"left {HOOK} alone: the {PACKAGE} (dpkg) package installed it" in p.stdout
    assert os.readlink(HOOK) == HOOK_TARGET
    assert os.path.isfile(f"{STATE}/host-facts.json")  # the package's hook still reads it


def test_install_hook_writes_the_packaged_hook(host: Host, tmp_path: Path):
    """The same executable: install-hook of the installed package (its python is
    /usr/bin/python3) into another hooks directory writes the .deb's bytes."""
    p = on_host("memlock-guard", "install-hook", "--hooks-dir", str(tmp_path / "hooks"))
    assert p.returncode == 0, p.stderr
    written = tmp_path / "hooks" / "qemu.d" / "50-memlock-guard"
    assert written.read_bytes() == Path(HOOK).read_bytes()
    assert written.stat().st_mode & 0o777 == Path(HOOK).stat().st_mode & 0o777 == 0o755


# -- upgraded ----------------------------------------------------------------------------

def test_an_upgrade_from_the_previous_version_keeps_an_edited_policy(
        host: Host, deb: Built, previous_deb: Built):
    assert apt("purge", PACKAGE).returncode == 0
    p = apt("install", previous_deb.path)
    assert p.returncode == 0, p.stderr
    assert installed_version() == PREVIOUS_VERSION
    shipped_before = Path(POLICY).read_text()
    assert PREVIOUS_POLICY_MARK in shipped_before
    edited = shipped_before.replace("<!-- <on-shortfall>refuse</on-shortfall> -->",
                                    "<on-shortfall>warn</on-shortfall>")
    assert edited != shipped_before
    Path(POLICY).write_text(edited)

    # Both the operator and the new version changed the conffile: dpkg would ask; apt's
    # noninteractive defaults keep the operator's and leave the new one beside it.
    p = apt("-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold",
            "install", deb.path)
    assert p.returncode == 0, p.stderr
    assert installed_version() == version()
    assert Path(POLICY).read_text() == edited
    new = Path(f"{POLICY}.dpkg-dist").read_text()
    assert PREVIOUS_POLICY_MARK not in new and "<!-- <on-shortfall>refuse" in new
    assert "memlock-guard: the hook /etc/libvirt/hooks/qemu.d/50-memlock-guard is upgraded" \
        in p.stdout
    p = on_host("/usr/bin/python3", "-c",
                "from memlock_guard.policy import load; print(load.load().on_shortfall)")
    assert p.stdout.strip() == "warn", p.stderr
    assert os.readlink(HOOK) == HOOK_TARGET and os.access(HOOK, os.X_OK)


# -- purged ------------------------------------------------------------------------------

def ours_in(path: str) -> list[str]:
    """Files under ``path`` that are memlock-guard's (by name, marker or link target)."""
    found = []
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = os.path.join(root, name)
            link = os.readlink(p) if os.path.islink(p) else ""
            head = b""
            if not link and os.path.isfile(p):
                with open(p, "rb") as f:
                    head = f.read(512)
            if ("memlock-guard" in name or "memlock_guard" in name or "memlock-guard" in link
                    or b"memlock-guard-hook: managed by" in head):
                found.append(p)
    return found


def test_purge_leaves_nothing_of_ours(host: Host, deb: Built):
    assert os.path.exists(AUDIT)  # the hook wrote decisions above
    p = apt("purge", PACKAGE)
    assert p.returncode == 0, p.stderr
    assert not known_to_dpkg()
    assert f"memlock-guard: kept the audit log in {LOG_DIR}/" in p.stdout, p.stdout
    assert ours_in("/etc/libvirt/hooks") == []
    assert not os.path.lexists("/etc/memlock-guard")
    assert not os.path.lexists(STATE)
    assert ours_in("/usr/bin") == []
    for gone in ("/usr/libexec/memlock-guard", "/usr/share/memlock-guard",
                 "/usr/lib/python3/dist-packages/memlock_guard",
                 "/lib/systemd/system/memlock-guard-watch.service"):
        assert not os.path.lexists(gone), gone
    assert os.path.exists(AUDIT)  # an audit trail outlives the package...
    if not host.log_existed:
        # ... unless it is purged too. (Only where the log is this module's own.)
        assert apt("install", deb.path).returncode == 0
        p = apt("purge", PACKAGE, env={"MEMLOCK_GUARD_PURGE_AUDIT_LOG": "yes"})
        assert p.returncode == 0, p.stderr
        assert not os.path.lexists(LOG_DIR)
