"""The hook's decision proper: policy, domain, host facts, the engine, and what to answer.

hook.py is the light entry point (protocol, deadline, decision cache); it imports this
module only when a decision has to be made from scratch, because this is where lxml,
pluggy and the engine come in.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, NamedTuple

from ..policy import load as pol
from ..support import audit
from ..support.errors import InputError
from .entry import Progress, failed

if TYPE_CHECKING:
    from lxml import etree

    from ..accounting.report import Report
    from ..domain import Domain
    from ..host.facts import HostFacts
    from ..policy.load import Policy

EXIT_OK = 0
EXIT_REFUSE = 1
MAX_FACTS_BYTES = 64 * 1024


class Outcome(NamedTuple):
    exit_code: int
    record: dict[str, Any]
    stdout: str = ""
    stderr: str = ""
    # A judged decision (not an on-error outcome) that may be replayed from the cache.
    cacheable: bool = False
    # Files the decision read whose sizes matter (loader, <rom file>), for the cache.
    files: tuple[str, ...] = ()


def decide(op: str, data: bytes, progress: Progress, policy_path: str | None,
           facts_path: str | None) -> Outcome:
    """Judge the domain XML ``data`` for ``op`` (prepare | migrate | restore)."""
    from ..domain.model import domain_from_element
    from ..support import xmlsafe

    try:
        path, named = pol.policy_path(policy_path, environ={})
        base = pol.load(path, named=named)
    except pol.PolicyError as e:
        if e.on_error is not None:
            progress.on_error = e.on_error.value
        if e.audit_log is not None:
            progress.audit_log = e.audit_log
        raise
    progress.on_error = base.on_error.value
    progress.audit_log = base.audit_log
    progress.policy_origin = base.origin

    root = xmlsafe.parse(data, what="domain XML on stdin")
    domain = domain_from_element(root)
    progress.uuid = domain.uuid
    p = pol.for_domain(base, domain)
    progress.policy_origin = p.origin

    from ..accounting.report import assess

    files = domain_files(domain)
    facts = host_facts(files, facts_path)
    pm = pol.plugin_manager(p)
    report = assess(domain, facts, pol.to_settings(p), pm)
    outcome = judge(op, report, p, root, progress)
    return Outcome(outcome.exit_code, outcome.record, outcome.stdout, outcome.stderr,
                   cacheable=outcome.cacheable, files=files)


def judge(op: str, report: Report, p: Policy, root: etree._Element,
          progress: Progress) -> Outcome:
    from ..accounting.verdict import Outcome as Verdict

    v = report.verdict
    excluded = report.ledger.excluded_plugins
    if v.outcome is not Verdict.SHORT:
        if excluded:
            # The plugins left out could only have added bytes: a fit is not proven.
            a = failed(progress, "third-party plugin(s) left out of the ledger: "
                       + "; ".join(excluded), report=report)
            return Outcome(a.exit_code, a.record, a.stdout, a.stderr)
        action = "allow" if op == "prepare" else "keep"
        return Outcome(EXIT_OK, audit.from_report(op, report, action=action, policy=p.origin),
                       cacheable=True)

    if op == "prepare":
        text = paragraph(report, p)
        if p.on_shortfall is pol.OnShortfall.WARN:
            return Outcome(EXIT_OK, audit.from_report(op, report, action="warn", policy=p.origin,
                                                      message=text),
                           stderr=f"memlock-guard: warning (on-shortfall warn, the start goes "
                                  f"on): {text}", cacheable=True)
        return Outcome(EXIT_REFUSE, audit.from_report(op, report, action="refuse",
                                                      policy=p.origin, message=text),
                       stderr=f"memlock-guard refused the start: {text}", cacheable=True)

    if not p.may_adjust(op):
        return Outcome(EXIT_OK, audit.from_report(op, report, action="keep", policy=p.origin,
                                                  reason=f"adjust does not include {op}"),
                       cacheable=True)
    before = report.domain.memtune.hard_limit
    target = max(v.recommended_hard_limit, before or 0)
    if not raise_hard_limit(root, target):
        return Outcome(EXIT_OK, audit.from_report(op, report, action="keep", policy=p.origin,
                                                  reason="hard_limit already at least "
                                                         "the recommended value"),
                       cacheable=True)
    from lxml import etree

    xml = etree.tostring(root, encoding="unicode")
    return Outcome(EXIT_OK, audit.from_report(op, report, action="adjust", policy=p.origin,
                                              hard_limit_from=before, hard_limit_to=target),
                   stdout=xml if xml.endswith("\n") else xml + "\n", cacheable=True)


# -- the refusal paragraph --------------------------------------------------------------

def paragraph(report: Report, p: Policy) -> str:
    """The domain, mode, requirement, limit and its source, biggest items, and the remedy."""
    import shlex

    from ..support.units import human

    v = report.verdict
    name = report.domain.name
    limit = v.limit.bytes
    assert limit is not None  # a short verdict has a finite limit
    items = []
    for i in report.ledger.biggest(3):
        times = f" x {i.containers} containers" if i.containers > 1 else ""
        items.append(f"{i.source} {human(i.bytes)}{times}")
    kib = v.recommended_hard_limit // 1024
    quoted = shlex.quote(name)
    overridden = f" (per-domain policy: {', '.join(p.overridden)})" if p.overridden else ""
    return (
        f"domain {name!r} needs {human(v.required)} ({v.required} bytes) of locked memory "
        f"in {v.mode.value} accounting ({v.mode_reason}){overridden}, but QEMU would get "
        f"{human(limit)} ({limit} bytes) from {v.limit.source} ({v.limit.explanation}), "
        f"short by {human(v.required - limit)}. Biggest items: {'; '.join(items)}. "
        f"Remedy: virsh memtune {quoted} --hard-limit {kib} --config "
        f"(KiB, = {human(v.recommended_hard_limit)}: the requirement or QEMU's footprint, "
        f"whichever is larger, plus margin), or run: memlock-guard apply {quoted}"
    )


# -- editing the XML for migrate/restore -------------------------------------------------

# libvirt writes these before <memtune>; a new <memtune> goes after the last present.
_BEFORE_MEMTUNE = ("name", "uuid", "genid", "title", "description", "metadata", "maxMemory",
                   "memory", "currentMemory", "blkiotune")


def raise_hard_limit(root: etree._Element, target: int) -> bool:
    """Set ``<memtune><hard_limit unit='KiB'>`` to ``target`` bytes unless it is already
    at least that; True when the tree changed. Nothing else in the tree is touched."""
    from lxml import etree

    from ..support.units import KiB, parse_scaled, round_up

    target = round_up(target, KiB)
    memtune = root.find("memtune")
    if memtune is None:
        anchor = None
        for child in root:
            if isinstance(child.tag, str) and child.tag in _BEFORE_MEMTUNE:
                anchor = child
        memtune = etree.Element("memtune")
        if anchor is None:
            root.insert(0, memtune)
            indent = root.text
        else:
            anchor.addnext(memtune)
            indent = anchor.tail
        memtune.tail = indent
        # Indent like the neighbours, so a person reading the XML sees libvirt's layout.
        memtune.text = indent + "  " if indent and indent.startswith("\n") else None
    hard = memtune.find("hard_limit")
    if hard is not None:
        current = parse_scaled(hard.text, hard.get("unit"), what="<memtune><hard_limit>")
        if current >= target:
            return False
    else:
        hard = etree.Element("hard_limit")
        first_text = memtune.text
        memtune.insert(0, hard)
        if len(memtune) > 1:
            hard.tail = first_text
        else:
            hard.tail = memtune.tail
            if memtune.text is None and memtune.tail and memtune.tail.startswith("\n"):
                memtune.text = memtune.tail + "  "
    hard.set("unit", "KiB")
    hard.text = str(target // KiB)
    return True


# -- host facts ----------------------------------------------------------------------------

def domain_files(domain: Domain) -> tuple[str, ...]:
    """Absolute files the domain names whose sizes the ledger uses: loader, <rom file>s."""
    paths = [domain.firmware.loader_path]
    paths += [i.rom.file for i in domain.interfaces] + [h.rom.file for h in domain.hostdevs]
    return tuple(dict.fromkeys(p for p in paths if p and os.path.isabs(p)))


def host_facts(files: tuple[str, ...], facts_path: str | None) -> HostFacts:
    """Cheap host facts (no QEMU or libvirt probe) plus install-hook's cache."""
    from ..host import facts as host

    cache = read_facts_cache(facts_path) if facts_path else None
    dirs = cache.get("qemu_data_dirs") if cache else None
    return host.collect(extra_files=files, probe_qemu=False, probe_libvirt=False,
                        override=cache, data_dirs=tuple(dirs) if isinstance(dirs, list) else ())


def read_facts_cache(path: str) -> dict[str, Any] | None:
    """install-hook's host-facts JSON (the --host-facts format); None when there is none.

    Bad content is an error (and so follows on-error): the file is ours, and a decision
    on wrong versions would be silently wrong.
    """
    import json

    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FACTS_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise InputError(f"cannot read host facts cache {path}: {e.strerror or e}") from None
    if len(raw) > MAX_FACTS_BYTES:
        raise InputError(f"host facts cache {path} is too large")
    try:
        data = json.loads(raw)
    except ValueError:
        raise InputError(f"host facts cache {path} is not valid JSON; "
                         f"re-run memlock-guard install-hook") from None
    if not isinstance(data, dict):
        raise InputError(f"host facts cache {path} must hold a JSON object")
    return data
