"""A real privileged libvirtd + QEMU for end-to-end tests, driven through virsh.

The daemon is brought up by tests/e2e/libvirt_env.sh (the test command starts it too).
Every e2e session takes an exclusive lock first, so two test runs on one machine never
restart the daemon under each other. Under CI (CI=true) a daemon that cannot be
reached fails the tests; elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ..conftest import IN_CI, ROOT

ENV_SCRIPT = ROOT / "tests" / "e2e" / "libvirt_env.sh"
LOCK = "/run/memlock-guard-e2e.lock"
URI = "qemu:///system"


def _unavailable(why: str) -> None:
    if IN_CI:
        pytest.fail(f"e2e: libvirtd unavailable under CI: {why}")
    pytest.skip(f"e2e: libvirtd unavailable: {why}")


@dataclass
class Libvirtd:
    """Handle on the running daemon. Domains defined through it are cleaned up."""

    uri: str = URI
    defined: list[str] = field(default_factory=list)

    def virsh(self, *args: str, check: bool = True, timeout: float = 120,
              stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(["virsh", "-c", self.uri, *args], capture_output=True, text=True,
                           timeout=timeout, input=stdin)
        if check and p.returncode != 0:
            raise AssertionError(f"virsh {' '.join(args)} failed ({p.returncode}): "
                                 f"{p.stderr.strip()}")
        return p

    def define(self, xml: str) -> str:
        """virsh define from a file, as a user would; returns the domain name."""
        from lxml import etree

        name = etree.fromstring(xml.encode()).findtext("name")
        assert name
        path = Path(f"/tmp/mg-e2e-{name}.xml")
        path.write_text(xml)
        self.virsh("define", str(path))
        self.defined.append(name)
        return name

    def cleanup(self) -> None:
        for name in self.defined:
            self.virsh("destroy", name, check=False)
            self.virsh("undefine", name, "--nvram", check=False)
            self.virsh("undefine", name, check=False)
        self.defined.clear()

    def restart(self) -> None:
        r = subprocess.run(["bash", str(ENV_SCRIPT), "restart"], capture_output=True,
                           text=True, timeout=180)
        assert r.returncode == 0, f"libvirtd restart failed: {r.stderr[-2000:]}"

    def stop(self) -> None:
        r = subprocess.run(["bash", str(ENV_SCRIPT), "stop"], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, f"libvirtd stop failed: {r.stderr[-2000:]}"

    def start(self) -> None:
        r = subprocess.run(["bash", str(ENV_SCRIPT), "start"], capture_output=True,
                           text=True, timeout=180)
        assert r.returncode == 0, f"libvirtd start failed: {r.stderr[-2000:]}"


def unique_name(prefix: str) -> str:
    return f"mg-e2e-{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def e2e_lock() -> Iterator[None]:
    if os.geteuid() != 0:
        _unavailable("tests must run as root for qemu:///system")
    if os.environ.get("MEMLOCK_GUARD_E2E_LOCK_HELD") == "1":
        # The caller holds the lock for us, e.g. `flock -o LOCK script` running several
        # pytest sessions and virsh steps as one; taking it again would deadlock.
        yield
        return
    fd = os.open(LOCK, os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@pytest.fixture(scope="session")
def libvirtd_session(e2e_lock: None) -> Libvirtd:
    if shutil.which("virsh") is None:
        _unavailable("virsh is not installed (run scripts/test.sh)")
    r = subprocess.run(["bash", str(ENV_SCRIPT), "start"], capture_output=True, text=True,
                       timeout=600)
    if r.returncode != 0:
        _unavailable(f"libvirt_env.sh start failed: {r.stderr.strip()[-500:]}")
    return Libvirtd()


@pytest.fixture
def libvirtd(libvirtd_session: Libvirtd) -> Iterator[Libvirtd]:
    """The daemon, with every domain a test defines destroyed and undefined afterwards."""
    yield libvirtd_session
    libvirtd_session.cleanup()


def domain_type() -> str:
    """kvm where /dev/kvm works, else TCG."""
    return "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "qemu"


# -- the hook, installed for real ------------------------------------------------------------

HOOK_STATE = Path("/run/memlock-guard-e2e")
HOOK_POLICY = HOOK_STATE / "policy.xml"
HOOK_AUDIT = HOOK_STATE / "audit.jsonl"
POLICY_NS = "urn:memlock-guard:policy:1"


@dataclass
class HookedLibvirtd:
    """The daemon with memlock-guard's hook installed (qemu.d/50-memlock-guard).

    The hook reads its policy from HOOK_POLICY and logs to HOOK_AUDIT. Domains defined
    through ``define`` are cleaned up by the ``libvirtd`` fixture, when a test uses it
    too, and at the end of the session.
    """

    daemon: Libvirtd
    policy_path: Path = HOOK_POLICY
    audit_path: Path = HOOK_AUDIT

    def virsh(self, *args: str, check: bool = True, timeout: float = 120,
              stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.daemon.virsh(*args, check=check, timeout=timeout, stdin=stdin)

    def define(self, xml: str) -> str:
        return self.daemon.define(xml)

    def set_policy(self, xml_text: str) -> None:
        """Write the hook's policy file (atomically; the hook reads it on every run).

        A well-formed policy without <audit-log> gets this session's audit log, so
        audit_lines() sees its decisions; anything else is written exactly as given
        (to test broken policies).
        """
        from lxml import etree

        text = xml_text
        try:
            root = etree.fromstring(xml_text.encode())
        except etree.XMLSyntaxError:
            root = None
        if (root is not None and root.tag == f"{{{POLICY_NS}}}policy"
                and root.find(f"{{{POLICY_NS}}}audit-log") is None):
            etree.SubElement(root, f"{{{POLICY_NS}}}audit-log").text = str(self.audit_path)
            text = etree.tostring(root, encoding="unicode")
        tmp = self.policy_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.policy_path)

    def policy_xml(self, body: str = "") -> str:
        """A policy document with ``body`` and this session's audit log."""
        return (f'<policy xmlns="{POLICY_NS}">{body}'
                f"<audit-log>{self.audit_path}</audit-log></policy>")

    def audit_lines(self, since: int = 0) -> list[dict[str, Any]]:
        """Every audit record so far (from index ``since``), parsed."""
        import json

        if not self.audit_path.exists():
            return []
        lines = self.audit_path.read_text().splitlines()
        return [json.loads(line) for line in lines[since:] if line.strip()]


def _memlock_guard(*args: str) -> subprocess.CompletedProcess[str]:
    import sys

    return subprocess.run([sys.executable, "-m", "memlock_guard.cli", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def hooked_libvirtd(libvirtd_session: Libvirtd) -> Iterator[HookedLibvirtd]:
    """Installs the hook with `memlock-guard install-hook`, before the daemon restarts
    (libvirtd finds hooks only when it starts); uninstalls it and restarts at the end."""
    HOOK_STATE.mkdir(parents=True, exist_ok=True)
    HOOK_AUDIT.unlink(missing_ok=True)
    hooked = HookedLibvirtd(libvirtd_session)
    hooked.set_policy(hooked.policy_xml())
    r = _memlock_guard("install-hook", "--policy", str(HOOK_POLICY))
    assert r.returncode == 0, f"install-hook failed: {r.stderr}"
    try:
        libvirtd_session.restart()
        yield hooked
    finally:
        libvirtd_session.cleanup()
        r = _memlock_guard("uninstall-hook")
        libvirtd_session.restart()
        assert r.returncode == 0, f"uninstall-hook failed: {r.stderr}"
