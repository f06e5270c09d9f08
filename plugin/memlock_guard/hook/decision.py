"""The hook's decision proper: policy, domain, host facts, the engine, and what to answer.

entry.py is the light entry point (protocol, deadline, decision cache); it imports this
module only when a decision has to be made from scratch, because this is where lxml,
pluggy and the engine come in. The answer's shape is outcome.HookAnswer, which both use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..policy import load as policy_load
from ..policy.model import OnShortfall, PolicyError
from .outcome import EXIT_OK, EXIT_REFUSE, HookAnswer, Progress, failed

if TYPE_CHECKING:
    from lxml import etree

    from ..accounting.report import Report
    from ..policy.model import Policy


def decide(op: str, data: bytes, progress: Progress, policy_path: str | None,
           facts_path: str | None, cache_dir: str | None = None) -> HookAnswer:
    """Judge the domain XML ``data`` for ``op`` (prepare | migrate | restore).

    ``cache_dir``: the decision cache's directory, where pins.py keeps its records.
    """
    from ..accounting.backend import backend_of
    from ..accounting.report import assess
    from ..domain import Domain
    from ..host.cache import hook_facts
    from ..policy.model import plugin_manager, to_settings
    from ..policy.model import policy_path as find_policy
    from ..support import xmlsafe

    try:
        path, named = find_policy(policy_path, environ={})
        base = policy_load.load(path, named=named)
    except PolicyError as e:
        if e.on_error is not None:
            progress.on_error = e.on_error.value
        if e.audit_log is not None:
            progress.audit_log = e.audit_log
        raise
    progress.on_error = base.on_error.value
    progress.audit_log = base.audit_log
    progress.policy_origin = base.origin

    root = xmlsafe.parse(data, what="domain XML on stdin")
    domain = Domain.from_xml(root)
    progress.uuid = domain.uuid
    p = policy_load.for_domain(base, domain)
    progress.policy_origin = p.origin

    files = domain.named_files
    host = hook_facts(files, facts_path)
    # iommufd user accounting: the other QEMUs of this uid count against this one's
    # limit (accounting/pins.py); every other domain reads nothing more.
    shared = backend_of(domain).user_accounting
    uid_pinned = 0
    if shared:
        from .pins import uid_pinned_now

        uid_pinned = uid_pinned_now(domain, host, cache_dir=cache_dir)
    report = assess(domain, host, to_settings(p), plugin_manager(p), uid_pinned=uid_pinned)
    answer = judge(op, report, p, root, progress)
    answer.files = files
    if shared:
        answer.cacheable = False  # it rests on what else runs now, not on its inputs
    return answer


def judge(op: str, report: Report, p: Policy, root: etree._Element,
          progress: Progress) -> HookAnswer:
    from ..accounting.report import audit_record
    from ..accounting.verdict import Fit

    v = report.verdict

    def record(action: str, **extra: object) -> dict[str, object]:
        return audit_record(op, report, action=action, policy=p.origin, **extra)

    if v.fit is not Fit.SHORT:
        excluded = report.ledger.excluded_plugins
        if excluded:
            # The plugins left out could only have added bytes: a fit is not proven.
            return failed(progress, "third-party plugin(s) left out of the ledger: "
                          + "; ".join(excluded), record=record("allow"))
        return HookAnswer(EXIT_OK, record("allow" if op == "prepare" else "keep"),
                          cacheable=True)

    if op == "prepare":
        text = paragraph(report, p)
        if p.on_shortfall is OnShortfall.WARN:
            return HookAnswer(EXIT_OK, record("warn", message=text),
                              stderr=f"memlock-guard: warning (on-shortfall warn, the start "
                                     f"goes on): {text}", cacheable=True)
        return HookAnswer(EXIT_REFUSE, record("refuse", message=text),
                          stderr=f"memlock-guard refused the start: {text}", cacheable=True)

    if not p.may_adjust(op):
        return HookAnswer(EXIT_OK, record("keep", reason=f"adjust does not include {op}"),
                          cacheable=True)
    from lxml import etree

    from ..domain.edit import raise_hard_limit

    before = report.domain.memtune.hard_limit
    target = max(v.recommended_hard_limit + _reattach_budget(op, report, root), before or 0)
    if not raise_hard_limit(root, target):
        return HookAnswer(EXIT_OK, record("keep", reason="hard_limit already at least the "
                                                         "recommended value"),
                          cacheable=True)
    xml = etree.tostring(root, encoding="unicode")
    return HookAnswer(EXIT_OK, record("adjust", hard_limit_from=before, hard_limit_to=target),
                      stdout=xml if xml.endswith("\n") else xml + "\n", cacheable=True)


def _reattach_budget(op: str, report: Report, root: etree._Element) -> int:
    """Room for the VFs Nova hot-plugs again after a live migration.

    Nova detaches direct-passthrough VIFs before migrating and re-attaches them on the
    destination (driver.py _detach_direct_passthrough_vifs, _reattach_instance_vifs), so
    they are not in the XML this hook sees. Without a hard_limit libvirt would raise the
    memlock for them at hotplug (qemuDomainAdjustMaxMemLockHostdev); with ours it stays
    at ours, and behind a vIOMMU each VF is one more container, one more copy of the
    guest's memory. Never worse than libvirt: budget one copy per port of
    <nova:ports> that no interface of the XML names.
    """
    from ..baselines.libvirt import memory_total

    d = report.domain
    if op != "migrate" or d.nova is None or not d.has_viommu(report.libvirt.version):
        return 0
    return len(d.nova.detached_ports(root)) * memory_total(d, at_start=True)


def paragraph(report: Report, p: Policy) -> str:
    """The domain, mode, requirement, limit and its source, biggest items, and the remedy
    (accounting/remedy.py: in Nova's terms for a Nova instance)."""
    from ..accounting.remedy import sentence
    from ..support.units import human

    v = report.verdict
    name = report.domain.name
    limit = v.limit.bytes
    assert limit is not None  # a short verdict has a finite limit
    items = []
    for i in report.ledger.biggest(3):
        times = f" x {i.containers} containers" if i.containers > 1 else ""
        items.append(f"{i.source} {human(i.bytes)}{times}")
    overridden = f" (per-domain policy: {', '.join(p.overridden)})" if p.overridden else ""
    nova = report.domain.nova
    who = f"domain {name!r}"
    if nova is not None:
        who += (f" (OpenStack Nova instance {nova.name or '?'!r}, flavor "
                f"{nova.flavor or '?'!r})")
    others = (f", on top of the {human(v.uid_pinned)} that the other QEMUs of its uid "
              f"already pin (iommufd charges the user)" if v.uid_pinned else "")
    return (
        f"{who} needs {human(v.required)} ({v.required} bytes) of locked memory "
        f"in {v.mode.value} accounting ({v.mode_reason}){overridden}{others}, but QEMU "
        f"would get {human(limit)} ({limit} bytes) from {v.limit.source} "
        f"({v.limit.explanation}), short by {human(-(v.headroom or 0))}. Biggest items: "
        f"{'; '.join(items)}. Remedy: {sentence(report)}"
        + "".join(f". {why}" for why in report.will_not_start)
    )
