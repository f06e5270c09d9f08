"""`memlock-guard watch` against a real libvirtd, driven through virsh as a user would.

Timings are printed, never asserted: every wait polls with a bounded deadline.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import URI, HookedLibvirtd, Libvirtd, unique_name
from .test_apply_e2e import APPLIED_NS, dumpxml, hard_limit_kib, short_xml

pytestmark = pytest.mark.e2e

HOOK_FAILED = "Hook script execution failed"
DEADLINE = 30.0  # seconds: generous for a loaded CI machine; the real figure is printed


class Watch:
    """A `memlock-guard watch` process; its log on disk, its audit log in tmp."""

    def __init__(self, tmp: Path, policy: Path) -> None:
        self.log = tmp / "watch.log"
        self.policy = policy
        self._log_file = self.log.open("w")
        # Only our test domains: other domains on this daemon are none of our business.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "memlock_guard.cli", "watch", "--connect", URI,
             "--policy", str(policy), "--match", "mg-e2e-*", "--resync-interval", "0",
             "--verbose"],
            stdout=self._log_file, stderr=subprocess.STDOUT)
        # Listed every domain once: a define from now on reaches it as an event.
        self.wait_for_log("resync (connect)", count=1)

    def text(self) -> str:
        return self.log.read_text()

    def wait_for_log(self, needle: str, count: int = 1) -> None:
        until(f"{count} x {needle!r} in the watch log",
              lambda: self.text().count(needle) >= count, self)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log_file.close()
        return int(self.proc.returncode)


def until(what: str, check: Callable[[], bool], watch: Watch | None = None) -> float:
    """Poll ``check`` until true; the seconds it took. Fails after DEADLINE."""
    t0 = time.monotonic()
    while not check():
        if watch is not None and watch.proc.poll() is not None:
            pytest.fail(f"watch exited ({watch.proc.returncode}) while waiting for {what}:\n"
                        f"{watch.text()[-3000:]}")
        if time.monotonic() - t0 > DEADLINE:
            log = watch.text()[-3000:] if watch else ""
            pytest.fail(f"not within {DEADLINE}s: {what}\n{log}")
        time.sleep(0.05)
    return time.monotonic() - t0


def raised(lv: Libvirtd, name: str) -> bool:
    xml = dumpxml(lv, name)
    return hard_limit_kib(xml) is not None and APPLIED_NS in xml


def audit(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    p = tmp_path / "policy.xml"
    p.write_text('<policy xmlns="urn:memlock-guard:policy:1">'
                 f"<audit-log>{tmp_path / 'audit.jsonl'}</audit-log></policy>")
    return p


@pytest.fixture
def watch(libvirtd: Libvirtd, tmp_path: Path, policy: Path) -> Iterator[Watch]:
    w = Watch(tmp_path, policy)
    try:
        yield w
    finally:
        rc = w.stop()
        assert rc == 0, f"watch exited {rc}:\n{w.text()[-3000:]}"


def test_define_is_fixed_within_seconds(libvirtd: Libvirtd, watch: Watch,
                                        tmp_path: Path) -> None:
    name = unique_name("watch")
    libvirtd.define(short_xml(name))
    took = until(f"{name} raised", lambda: raised(libvirtd, name), watch)
    print(f"\nwatch raised {name} {took:.2f}s after virsh define returned")
    records = audit(tmp_path / "audit.jsonl")
    assert [(r["op"], r["action"], r["domain"], r["trigger"]) for r in records] == [
        ("watch", "apply", name, "defined/added")]
    # Its own redefinition comes back as an event, recognised without a second judgement.
    watch.wait_for_log(f"{name}: our own definition")
    assert "passwd='s3cret'" in dumpxml(libvirtd, name)


def test_stale_virsh_edit_is_fixed_again_and_survives(libvirtd: Libvirtd, watch: Watch,
                                                      tmp_path: Path) -> None:
    """A user saves an edit made on a copy from before watch raised the limit: the edit
    wins (it is the last define), and watch raises the limit again on top of it."""
    name = unique_name("stale")
    libvirtd.define(short_xml(name))
    until(f"{name} raised", lambda: raised(libvirtd, name), watch)
    # The user's copy predates the raise: the definition as they first wrote it.
    stale = short_xml(name, "edited on a stale copy").replace(
        "<name>", f"<uuid>{uuid_of(libvirtd, name)}</uuid><name>", 1)
    edited = tmp_path / "edited.xml"
    edited.write_text(stale)
    libvirtd.virsh("define", str(edited))
    until("raised again", lambda: len(audit(tmp_path / "audit.jsonl")) == 2, watch)
    until(f"{name} raised on top of the edit", lambda: raised(libvirtd, name), watch)
    assert "<description>edited on a stale copy</description>" in dumpxml(libvirtd, name)


def uuid_of(lv: Libvirtd, name: str) -> str:
    return lv.virsh("domuuid", name).stdout.strip()


def test_libvirtd_restart_domain_defined_during_the_outage(libvirtd: Libvirtd, watch: Watch,
                                                           tmp_path: Path) -> None:
    """The daemon restarts while watch runs, and a domain is defined before watch gets
    its connection back: the resync after the reconnect fixes it.

    watch is paused (SIGSTOP) from the daemon's stop until that define, so the define
    surely lands while it has no connection; otherwise its backoff might reconnect
    first and the DEFINED event, not the resync, would do the work."""
    libvirtd.stop()
    watch.wait_for_log("connection to qemu:///system lost")
    watch.proc.send_signal(signal.SIGSTOP)
    try:
        libvirtd.start()
        name = unique_name("outage")
        libvirtd.define(short_xml(name))
        assert not raised(libvirtd, name)
    finally:
        watch.proc.send_signal(signal.SIGCONT)
    t0 = time.monotonic()
    until(f"{name} raised after the reconnect", lambda: raised(libvirtd, name), watch)
    print(f"\nafter libvirtd restart, watch fixed {name} {time.monotonic() - t0:.2f}s "
          "after it was resumed")
    assert watch.text().count("connected to qemu:///system") >= 2
    (rec,) = [r for r in audit(tmp_path / "audit.jsonl") if r["domain"] == name]
    assert rec["trigger"] == "resync/connect" and rec["action"] == "apply"


def test_watch_stops_cleanly_on_sigterm(libvirtd: Libvirtd, tmp_path: Path,
                                        policy: Path) -> None:
    w = Watch(tmp_path, policy)
    assert w.stop() == 0
    assert "stopping (connects 1" in w.text()


def test_broken_policy_at_start_exits_2(libvirtd: Libvirtd, tmp_path: Path) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text("<policy xmlns='urn:memlock-guard:policy:1'><mode>sloppy</mode></policy>")
    r = subprocess.run([sys.executable, "-m", "memlock_guard.cli", "watch", "--connect", URI,
                        "--policy", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.startswith("memlock-guard: policy ") and "sloppy" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_hook_refuses_then_allows_the_start_once_watch_ran(
        hooked_libvirtd: HookedLibvirtd, libvirtd: Libvirtd, tmp_path: Path) -> None:
    """The installed hook refuses `virsh start` of a short domain; once watch has run
    (its start-up resync raises the definition), the hook lets the same start through.

    The start itself still fails here, after the hook (no VFIO device, no
    CAP_SYS_RESOURCE to set a memlock limit above 8 MiB): the assertions are on the
    hook's decisions, from virsh's error and the shared audit log.
    """
    hooked = hooked_libvirtd
    hooked.set_policy(hooked.policy_xml("<mode>strict</mode>"))
    mark = len(hooked.audit_lines())
    name = libvirtd.define(short_xml(unique_name("hooked")))
    refused = libvirtd.virsh("start", name, check=False)
    assert refused.returncode != 0 and HOOK_FAILED in refused.stderr

    # watch judges with the hook's own policy, and logs to the same audit log.
    w = Watch(tmp_path, hooked.policy_path)
    try:
        until(f"{name} raised", lambda: raised(libvirtd, name), w)
    finally:
        assert w.stop() == 0
    started = libvirtd.virsh("start", name, check=False)
    libvirtd.virsh("destroy", name, check=False)
    hooked.set_policy(hooked.policy_xml())

    assert HOOK_FAILED not in started.stderr, started.stderr
    assert started.returncode != 0  # expected here, for the device or the memlock limit
    records = [(r["op"], r["action"], r["verdict"]) for r in hooked.audit_lines(mark)
               if r["domain"] == name]
    assert records == [("prepare", "refuse", "short"), ("watch", "apply", "short"),
                       ("prepare", "allow", "fits")], records
