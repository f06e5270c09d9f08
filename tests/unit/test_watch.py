"""The reconciler against libvirt's test:///default driver: real events, in this process."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("libvirt")

from memlock_guard.host.facts import HostFacts
from memlock_guard.libvirtd.reconcile import Judge
from memlock_guard.libvirtd.watch import PolicySource, Watcher
from memlock_guard.policy import load as policymod
from memlock_guard.policy import model as policy_model
from memlock_guard.support import audit, defaults

from .testdriver import FITTING_DOMAIN, URI, Driver, open_test_driver, short_xml

DEADLINE = 10.0  # seconds; generous, since a loaded CI box may be slow


@pytest.fixture
def td(tmp_path: Path) -> Iterator[Driver]:
    d = open_test_driver(tmp_path)
    yield d
    d.cleanup()


class Running:
    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher
        self.stop = threading.Event()
        self.rc: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.rc = self.watcher.run(self.stop)

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), "watch did not stop"
        assert self.rc == 0


def watcher(td: Driver, host: HostFacts, **kw: Any) -> Watcher:
    source = PolicySource(str(td.policy), named=True)

    def make_judge(_conn: Any, pol: policy_model.Policy) -> Judge:
        return Judge(policy=pol, host=host, probe_files=False)

    return Watcher(URI, source, make_judge, match="mgt-*", **kw)


def until(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        assert time.monotonic() < deadline, f"not within {DEADLINE}s: {what}"
        time.sleep(0.02)


def has_limit(td: Driver, name: str) -> bool:
    xml = td.xml(name)
    return "<hard_limit" in xml and "urn:memlock-guard:applied:1" in xml


def test_resync_at_start_then_events(td: Driver, pinned_host: HostFacts) -> None:
    td.define(short_xml("mgt-w-before"))  # defined before watch runs: the resync fixes it
    w = watcher(td, pinned_host, resync_interval=0)
    with Running(w):
        until("the pre-existing domain is raised", lambda: has_limit(td, "mgt-w-before"))
        td.define(short_xml("mgt-w-after"))
        until("the newly defined domain is raised", lambda: has_limit(td, "mgt-w-after"))
        td.define(FITTING_DOMAIN.format(name="mgt-w-fits"))
        until("the fitting domain is judged", lambda: w.stats["judged"] >= 3)
        # Our own redefinitions come back as DEFINED events; they must not loop.
        time.sleep(0.5)
        settled = dict(w.stats)
        time.sleep(0.5)
        assert w.stats == settled
    assert "<hard_limit" not in td.xml("mgt-w-fits")
    assert w.stats["raised"] == 2 and w.stats["judged"] == 3 and w.stats["errors"] == 0
    records = audit.read(str(td.audit_log))
    assert [(r["op"], r["action"], r["domain"]) for r in records] == [
        ("watch", "apply", "mgt-w-before"), ("watch", "apply", "mgt-w-after")]
    assert records[0]["trigger"] == "resync/connect"
    assert records[1]["trigger"] == "defined/added"
    assert records[1]["verdict"] == "short" and records[1]["hard_limit_from"] is None


def test_edits_are_judged_again(td: Driver, pinned_host: HostFacts) -> None:
    td.define(short_xml("mgt-w-grow"))
    w = watcher(td, pinned_host, resync_interval=0)
    with Running(w):
        until("raised", lambda: has_limit(td, "mgt-w-grow"))
        first = td.xml("mgt-w-grow")
        # The user doubles the memory with `virsh edit`: our limit is ours, the ledger
        # changed, so it is raised again.
        td.edit("mgt-w-grow", "<memory unit='KiB'>4194304</memory>",
                "<memory unit='KiB'>8388608</memory>")
        until("raised again", lambda: w.stats["raised"] == 2)
    second = td.xml("mgt-w-grow")
    assert second != first and second.count("<mga:applied ") == 1
    assert "<currentMemory unit='KiB'>4194304</currentMemory>" in second  # the edit survives


def test_dry_run_only_reports(td: Driver, pinned_host: HostFacts) -> None:
    td.define(short_xml("mgt-w-dry"))
    before = td.xml("mgt-w-dry")
    w = watcher(td, pinned_host, dry_run=True, resync_interval=0)
    with Running(w):
        until("audited", lambda: td.audit_log.exists())
    assert td.xml("mgt-w-dry") == before
    (rec,) = audit.read(str(td.audit_log))
    assert rec["action"] == "would-apply" and rec["dry_run"] is True


def test_periodic_resync_catches_changes_without_events(td: Driver,
                                                        pinned_host: HostFacts) -> None:
    w = watcher(td, pinned_host, resync_interval=0.3)
    with Running(w):
        until("two resyncs", lambda: w.stats["resyncs"] >= 2)


def test_a_bad_domain_policy_is_reported_not_fatal(td: Driver, pinned_host: HostFacts) -> None:
    bad = short_xml("mgt-w-bad").replace(
        "<memory", "<metadata><mg:policy xmlns:mg='urn:memlock-guard:policy:1'>"
                   "<mg:mode>sloppy</mg:mode></mg:policy></metadata><memory", 1)
    td.define(bad)
    w = watcher(td, pinned_host, resync_interval=0)
    with Running(w):
        until("the error is counted", lambda: w.stats["errors"] == 1)
        td.define(short_xml("mgt-w-good"))
        until("the next domain is still handled", lambda: has_limit(td, "mgt-w-good"))
    errors = [r for r in audit.read(str(td.audit_log)) if r["verdict"] == "error"]
    assert errors[0]["domain"] == "mgt-w-bad" and "sloppy" in errors[0]["error"]


def test_policy_file_changes_are_picked_up(td: Driver, pinned_host: HostFacts) -> None:
    w = watcher(td, pinned_host, resync_interval=0)
    with Running(w):
        until("connected", lambda: w.stats["resyncs"] >= 1)
        td.policy.write_text('<policy xmlns="urn:memlock-guard:policy:1">'
                             "<margin unit='MiB'>1024</margin>"
                             f"<audit-log>{td.audit_log}</audit-log></policy>")
        td.define(short_xml("mgt-w-policy"))
        until("raised", lambda: has_limit(td, "mgt-w-policy"))
    (rec,) = audit.read(str(td.audit_log))
    assert rec["policy"] == str(td.policy)
    assert rec["hard_limit_to"] >= rec["required"] + 1024 * 1024 * 1024


def test_a_policy_override_set_with_virsh_metadata_is_acted_on(td: Driver,
                                                              pinned_host: HostFacts) -> None:
    """`virsh metadata … --config` sends METADATA_CHANGE, not DEFINED: a domain that
    fits under tolerant accounting gets raised once its override asks for strict."""
    import libvirt  # type: ignore[import-untyped]

    td.policy.write_text('<policy xmlns="urn:memlock-guard:policy:1">'
                         "<zero-page-allowance>unlimited</zero-page-allowance>"
                         f"<audit-log>{td.audit_log}</audit-log></policy>")
    probe = td.define(short_xml("mgt-w-meta"))
    judge = Judge(policy=policymod.load(str(td.policy)), host=pinned_host, probe_files=False)
    report, _ = judge(td.xml("mgt-w-meta"))
    strict, tolerant = report.verdict.required_strict, report.verdict.required_tolerant
    kib = -(-tolerant // 1024)
    assert kib * 1024 < strict, "the domain needs a zero-fill tail for this test"
    probe.setMemoryParameters({"hard_limit": kib}, libvirt.VIR_DOMAIN_AFFECT_CONFIG)

    w = watcher(td, pinned_host, resync_interval=0)
    with Running(w):
        until("judged at start", lambda: w.stats["judged"] >= 1)
        assert w.stats["raised"] == 0  # fits: the host policy resolves auto to tolerant
        probe.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                          "<policy><mode>strict</mode></policy>", "mg",
                          defaults.POLICY_NS, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        until("raised after the override", lambda: w.stats["raised"] == 1)
    (rec,) = audit.read(str(td.audit_log))
    assert rec["trigger"] == f"metadata {defaults.POLICY_NS}"
    assert rec["mode"] == "strict" and rec["hard_limit_from"] == kib * 1024


def test_a_policy_file_change_resyncs_every_domain(td: Driver, pinned_host: HostFacts) -> None:
    """The operator switches the host policy from tolerant to strict: domains defined
    long ago are judged again at once, not at the next event or periodic resync."""
    import libvirt

    td.policy.write_text('<policy xmlns="urn:memlock-guard:policy:1"><mode>tolerant</mode>'
                         "<zero-page-allowance>unlimited</zero-page-allowance>"
                         f"<audit-log>{td.audit_log}</audit-log></policy>")
    dom = td.define(short_xml("mgt-w-host-policy"))
    judge = Judge(policy=policymod.load(str(td.policy)), host=pinned_host, probe_files=False)
    report, _ = judge(td.xml("mgt-w-host-policy"))
    kib = -(-report.verdict.required_tolerant // 1024)
    assert kib * 1024 < report.verdict.required_strict
    dom.setMemoryParameters({"hard_limit": kib}, libvirt.VIR_DOMAIN_AFFECT_CONFIG)

    w = watcher(td, pinned_host, resync_interval=0)
    with Running(w):
        until("judged at start", lambda: w.stats["judged"] >= 1)
        assert w.stats["raised"] == 0
        td.policy.write_text('<policy xmlns="urn:memlock-guard:policy:1"><mode>strict</mode>'
                             f"<audit-log>{td.audit_log}</audit-log></policy>")
        until("raised after the policy change", lambda: w.stats["raised"] == 1)
    (rec,) = audit.read(str(td.audit_log))
    assert rec["trigger"] == "resync/policy" and rec["mode"] == "strict"


def test_a_lasting_failure_does_not_spin(td: Driver) -> None:
    """Host facts that cannot be read (say) fail every connection: watch logs, pauses
    and tries again, instead of reconnecting in a tight loop."""
    from memlock_guard.libvirtd import client as lc
    from memlock_guard.support.errors import InputError

    def broken(_conn: Any, _pol: policy_model.Policy) -> Judge:
        raise InputError("cannot read host facts /nonexistent: No such file or directory")

    w = Watcher(URI, PolicySource(str(td.policy), named=True), broken,
                backoff=lc.Backoff(initial=0.05, maximum=0.2, jitter=0.0, give_up_after=None))
    with Running(w):
        time.sleep(1.0)
    assert 2 <= w.stats["connects"] <= 8
