"""Judge a defined domain and raise its persistent hard_limit, without losing updates.

Shared by ``memlock-guard apply`` and the ``watch`` reconciler. The pure part (what to
change, and the new XML) is libvirtd/apply.py; this module adds the libvirt round trip:

1. read the persistent definition (secrets included) and note its digest;
2. judge it (policy file + the domain's own <metadata> override + command-line
   options) and compute the new XML;
3. right before redefining, read the definition again. If its digest changed (someone
   ran ``virsh define``/``edit`` meanwhile), go back to 2 with the new text, so their
   edit is the base of ours and survives;
4. defineXML.

libvirt has no compare-and-swap for definitions, so a define landing between 3 and 4
(microseconds) could still be overwritten; the reconciler then sees that define's own
DEFINED event and judges it again, and an ``apply`` run can simply be repeated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..accounting.report import Report, Settings, assess
from ..domain import Domain, parse_domain
from ..host.facts import HostFacts
from ..host.probe import stat_files
from ..policy import load as policymod
from ..policy import model as policy_model
from ..support.errors import MemlockGuardError
from . import apply as applymod
from . import client as lc

MAX_ATTEMPTS = 5  # re-judgements when the definition keeps changing under us


@dataclass(frozen=True, slots=True)
class Judge:
    """How a domain is judged: host policy, this host's facts, command-line overrides.

    ``overrides`` are the Settings fields given explicitly on the command line
    (e.g. --mode); they win over the policy file and the domain's own override.
    """

    policy: policy_model.Policy
    host: HostFacts
    overrides: tuple[tuple[str, Any], ...] = ()
    # Whether to stat files a domain names (loaders, <rom file>); off when host facts
    # come from a file that says probe_host: false.
    probe_files: bool = True
    pm: Any = field(default=None, compare=False)

    def settings_for(self, domain: Domain) -> tuple[Settings, policy_model.Policy]:
        p = policymod.for_domain(self.policy, domain)
        s = policy_model.to_settings(p)
        return s._replace(**dict(self.overrides)), p

    def host_for(self, domain: Domain) -> HostFacts:
        if not self.probe_files:
            return self.host
        known = dict(self.host.rom_files)
        extra, missing = stat_files(p for p in domain.named_files if p not in known)
        if not extra and not missing:
            return self.host
        return self.host._replace(rom_files=tuple(sorted({**known, **dict(extra)}.items())),
                                  missing_files=missing)

    def __call__(self, xml_text: str, *,
                 uid_pinned: int = 0) -> tuple[Report, policy_model.Policy]:
        domain = parse_domain(xml_text.encode())
        settings, p = self.settings_for(domain)
        return assess(domain, self.host_for(domain), settings, self.pm,
                      uid_pinned=uid_pinned), p


@dataclass(frozen=True, slots=True)
class Reconciled:
    """What happened to one domain."""

    name: str
    uuid: str | None
    result: applymod.Edit | None  # None when not judged (transient domain)
    report: Report | None
    policy: policy_model.Policy | None
    written: bool  # defineXML was called
    attempts: int  # judgements made (more than 1: the definition changed under us)
    skipped: str | None = None  # why nothing was judged

    @property
    def action(self) -> str:
        if self.result is None:
            return "skip"
        return self.result.plan.action.value


def reconcile(conn: Any, dom: Any, judge: Judge, *, dry_run: bool = False,
              force: bool = False,
              before_commit: Callable[[int], None] | None = None) -> Reconciled:
    """Raise ``dom``'s persistent hard_limit where it is short (see module docstring).

    An OpenStack Nova instance is judged but skipped unless ``force``: see nova_skip().
    ``before_commit(attempt)`` runs between judging and the final re-read; tests use it
    to race a ``virsh define`` against us deterministically.
    """
    name = dom.name()
    uuid = dom.UUIDString()
    if not lc.is_persistent(dom):
        return Reconciled(name, uuid, None, None, None, False, 0,
                       skipped="transient: no persistent definition to raise")
    xml = lc.persistent_xml(dom)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        report, p = judge(xml)
        if report.domain.nova is not None and not force:
            return Reconciled(name, uuid, None, report, p, False, attempt,
                              skipped=nova_skip(report))
        result = applymod.apply_to_xml(xml, report, name=name)
        if not result.changed or dry_run:
            return Reconciled(name, uuid, result, report, p, False, attempt)
        if before_commit is not None:
            before_commit(attempt)
        now = lc.persistent_xml(dom)
        if applymod.xml_digest(now) != applymod.xml_digest(xml):
            xml = now  # edited while we judged: their edit becomes our base
            continue
        lc.define(conn, result.new_xml)
        return Reconciled(name, uuid, result, report, p, True, attempt)
    raise MemlockGuardError(f"{name}: the definition changed {MAX_ATTEMPTS} times while it "
                            f"was being judged; not redefined (run apply again)")


def nova_skip(report: Report) -> str:
    """Why a Nova instance is left alone: Nova redefines it from the flavor and image at
    every start, hard reboot, resize and migration (driver.py _hard_reboot ->
    _get_guest_xml -> defineXML), so our hard_limit would be lost, and Nova's own
    define-then-start leaves no moment in which a reconciler could win the race."""
    from ..support.units import human

    nova = report.domain.nova
    assert nova is not None
    v = report.verdict
    state = (f"short by {human(-v.headroom)}" if v.headroom is not None and v.headroom < 0
             else v.fit.value)
    return (f"OpenStack Nova instance {nova.name or '?'!r} (flavor {nova.flavor or '?'!r}), "
            f"{state}: Nova redefines this domain at every start and hard reboot, so a "
            f"hard_limit written here would not last; change the flavor or image instead "
            f"(memlock-guard explain {report.domain.name} lists how), or --force")


def raise_record(outcome: Reconciled, *, op: str, trigger: str | None = None) -> dict[str, Any]:
    """The audit-log line for a raise (action ``apply``), as the hook writes its own."""
    from ..accounting.report import audit_record

    assert outcome.report is not None and outcome.result is not None
    plan = outcome.result.plan
    extra: dict[str, Any] = {
        "hard_limit_from": plan.current_hard_limit,
        "hard_limit_to": plan.new_hard_limit,
        "ledger_digest": plan.ledger_digest,
        "reason": plan.reason,
        "attempts": outcome.attempts,
    }
    if trigger:
        extra["trigger"] = trigger
    return audit_record(op, outcome.report, action="apply",
                             policy=outcome.policy.origin if outcome.policy else None,
                             **extra)
