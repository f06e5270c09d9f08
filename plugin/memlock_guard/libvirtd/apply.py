"""Raising a persistent ``<memtune><hard_limit>``: the decision and the XML edit, pure.

``apply_to_xml(xml_text, report)`` takes the persistent definition (as libvirt's
``XMLDesc(INACTIVE|SECURE)`` gives it) and the Report judged from that same text, and
returns what to do, the new XML text and a unified diff. No I/O: the libvirt round trip
(re-read, compare digests, defineXML) lives in reconcile.py; the XML edit itself is
domain/edit.py, which the hook's migrate/restore answer uses too.

Rules (ISSUE 4):
- raise only where the domain is short, to the recommended value
  (max(requirement, QEMU footprint) + margin); never lower; leave a hard_limit that fits;
- record provenance in ``<metadata><mga:applied value= unit= mode= version=
  ledger-digest=/>`` so a later run recognises a limit it set itself: when that limit is
  still in place and the ledger has changed (devices added, memory grown), it is raised
  to the new recommendation even before it falls short of the memlock requirement,
  because the same number is also the cgroup cap of the whole QEMU process;
- change nothing else. The tree is edited in place (one element replaced or inserted,
  with libvirt's indentation) and written back in libvirt's own style, so the diff shows
  exactly the lines that change.

The provenance uses its own namespace, not the policy's: libvirt keeps at most one
``<metadata>`` child per namespace (virXMLNodeSanitizeNamespaces drops the rest on
define), so an ``<mg:applied>`` next to an ``<mg:policy>`` override would vanish.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from lxml import etree

from .. import __version__
from ..accounting.ledger import Ledger
from ..accounting.report import Report
from ..accounting.verdict import Fit, Verdict
from ..baselines.libvirt import LIBVIRT_UNLIMITED
from ..domain.edit import metadata_child, raise_hard_limit, set_metadata
from ..domain.serialize import serialize
from ..support import xmlsafe
from ..support.defaults import APPLIED_NS, APPLIED_PREFIX
from ..support.errors import InputError
from ..support.units import KiB, human, parse_scaled

APPLIED_TAG = f"{{{APPLIED_NS}}}applied"


class Action(StrEnum):
    RAISE = "raise"  # hard_limit set or raised (or, in a dry run, would be)
    KEEP = "keep"  # left alone: fits, unlimited, or our own limit still covers it


@dataclass(frozen=True, slots=True)
class Provenance:
    """What ``<mga:applied>`` says: the hard_limit memlock-guard set, and on what basis."""

    value_kib: int
    mode: str
    version: str
    ledger_digest: str

    @property
    def value_bytes(self) -> int:
        return self.value_kib * KiB


@dataclass(frozen=True, slots=True)
class Plan:
    action: Action
    reason: str  # one sentence, for people and the audit log
    current_hard_limit: int | None  # bytes, as defined now
    new_hard_limit: int | None  # bytes; set when action is RAISE
    ledger_digest: str
    ours: bool  # the current hard_limit is the one memlock-guard recorded


@dataclass(frozen=True, slots=True)
class Edit:
    plan: Plan
    old_xml: str  # the input, as written back by us (libvirt's style)
    new_xml: str  # equal to old_xml when the plan is KEEP
    diff: str  # unified diff old -> new; empty when nothing changes

    @property
    def changed(self) -> bool:
        return self.new_xml != self.old_xml


# -- digests ---------------------------------------------------------------------------

def ledger_digest(ledger: Ledger) -> str:
    """A stable hash of what is pinned: every ledger item (notes aside) and the containers.

    Canonical JSON of the items in ledger order; a field added to LedgerItem later
    changes every digest once, which only makes the next run re-judge (harmless).
    ``note`` and ``mapping`` are labels, not bytes: they are left out, so that adding
    them did not change the digest of any domain apply had already raised; ``hotplug``
    is left out at its default (False) for the same reason.
    """
    items = []
    for item in ledger.items:
        d = {name: _plain(value) for name, value in item._asdict().items()
             if name not in _LABELS and not (name == "hotplug" and not value)}
        items.append(d)
    blob = json.dumps({"containers": ledger.containers, "items": items},
                      sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


_LABELS = frozenset({"note", "mapping"})


def _plain(v: Any) -> Any:
    if isinstance(v, StrEnum):
        return v.value
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v


def xml_digest(xml_text: str) -> str:
    """Identity of a definition as libvirt returned it: a change anywhere changes it."""
    return "sha256:" + hashlib.sha256(xml_text.encode()).hexdigest()


# -- reading provenance ----------------------------------------------------------------

def read_provenance(root: etree._Element) -> Provenance | None:
    """Our ``<mga:applied>`` in a parsed domain, or None (absent, or edited into junk)."""
    el = _applied_element(root)
    if el is None:
        return None
    try:
        value = parse_scaled(el.get("value"), el.get("unit"), what="<mga:applied value=>")
    except InputError:
        return None
    return Provenance(value_kib=value // KiB, mode=el.get("mode") or "?",
                      version=el.get("version") or "?",
                      ledger_digest=el.get("ledger-digest") or "")


def provenance_of(xml_text: str) -> Provenance | None:
    return read_provenance(_parse(xml_text))


def _applied_element(root: etree._Element) -> etree._Element | None:
    return metadata_child(root, APPLIED_NS)


# -- the decision ----------------------------------------------------------------------

def plan(report: Report, provenance: Provenance | None) -> Plan:
    """What to do with the domain ``report`` judged; ``provenance`` from the same XML."""
    v = report.verdict
    current = report.domain.memtune.hard_limit
    digest = ledger_digest(report.ledger)
    ours = (provenance is not None and current is not None
            and provenance.value_bytes == current)

    def keep(reason: str) -> Plan:
        return Plan(Action.KEEP, reason, current, None, digest, ours)

    def raise_to(target: int, reason: str) -> Plan:
        return Plan(Action.RAISE, reason, current, max(target, current or 0), digest, ours)

    if v.fit is Fit.UNLIMITED:
        return keep(f"unlimited: {v.limit.explanation}")
    if v.fit is Fit.SHORT:
        assert v.headroom is not None
        return raise_to(v.recommended_hard_limit,
                        f"short by {human(-v.headroom)}: needs {human(v.required)} "
                        f"({v.mode.value}) but QEMU gets {human(v.limit.bytes)} "
                        f"({v.limit.source}){_reserve_words(v, lead='; ')}")
    if ours and provenance is not None and current is not None \
            and v.recommended_hard_limit > current:
        # Our own limit follows our recommendation upward: devices or memory changed,
        # or the policy now asks for more (a hotplug reserve, a larger margin).
        why = ("devices changed" if provenance.ledger_digest != digest
               else "the recommendation grew")
        return raise_to(v.recommended_hard_limit,
                        f"{why} since memlock-guard set {human(current)}: recommended now "
                        f"{human(v.recommended_hard_limit)} (needs {human(v.required)}"
                        f"{_reserve_words(v)}, footprint {human(v.footprint)})")
    if ours and provenance is not None and provenance.ledger_digest != digest:
        assert current is not None
        return keep(f"fits: devices changed, but the hard_limit memlock-guard set "
                    f"({human(current)}) still covers them")
    if v.required == 0:
        return keep("fits: nothing pins guest memory (no VFIO, NVMe or vDPA device)")
    assert v.headroom is not None
    whose = "memlock-guard's hard_limit" if ours else v.limit.source
    return keep(f"fits: needs {human(v.required)} ({v.mode.value}), QEMU gets "
                f"{human(v.limit.bytes)} ({whose}), headroom {human(v.headroom)}")


def _reserve_words(v: Verdict, lead: str = ", ") -> str:
    """What the recommendation holds beyond the requirement, for a plan's reason."""
    parts = []
    if v.memory_reserve:
        parts.append(f"{human(v.memory_reserve)} for memory up to maxMemory")
    if v.vfio_reserve:
        parts.append(f"{human(v.vfio_reserve)} for the policy's hotplug reserve")
    if v.uid_pinned:
        parts.append(f"{human(v.uid_pinned)} other QEMUs of its uid pin")
    return f"{lead}plus {' and '.join(parts)}" if parts else ""


# -- the edit --------------------------------------------------------------------------

def apply_to_xml(xml_text: str, report: Report, *, name: str | None = None) -> Edit:
    """The persistent XML with hard_limit raised and provenance recorded, if needed.

    ``report`` must be the judgement of this very text. Idempotent: feeding the output
    back (with its own report) gives KEEP and the same text.
    """
    root = _parse(xml_text)
    return edit_with(root, plan(report, read_provenance(root)), report, name=name)


def edit_with(root: etree._Element, p: Plan, report: Report, *,
              name: str | None = None, after: str = "apply") -> Edit:
    """``root`` (parsed from a definition) with ``p`` carried out: what apply_to_xml does,
    for a plan judged on another text. attach-device judges the definition with the
    new device in it, and raises the limit of the definition as it is, before libvirt
    adds the device."""
    old = serialize(root)
    if p.action is Action.KEEP:
        return Edit(p, old, old, "")
    assert p.new_hard_limit is not None
    check_expressible(p.new_hard_limit, report.domain.name)
    raise_hard_limit(root, p.new_hard_limit)
    set_metadata(root, provenance_element(p, report))
    new = serialize(root)
    return Edit(p, old, new, unified_diff(old, new, name or report.domain.name, after))


def check_expressible(hard_limit: int, name: str) -> None:
    """InputError when libvirt cannot take ``hard_limit`` as a finite value."""
    if hard_limit // KiB >= LIBVIRT_UNLIMITED:
        # libvirt reads this value as "unlimited" and anything above as an overflow; no
        # finite hard_limit covers such a domain, and writing "unlimited" is not ours to do.
        raise InputError(f"{name} would need a hard_limit of {human(hard_limit)}, beyond "
                         f"the largest libvirt accepts "
                         f"({human((LIBVIRT_UNLIMITED - 1) * KiB)}); not changed")


def provenance_element(p: Plan, report: Report) -> etree._Element:
    """``<mga:applied>`` for a raise to ``p.new_hard_limit`` on ``report``'s judgement."""
    assert p.new_hard_limit is not None
    return _provenance_element(Provenance(
        value_kib=p.new_hard_limit // KiB, mode=report.verdict.mode.value,
        version=__version__, ledger_digest=p.ledger_digest))


def unified_diff(old: str, new: str, name: str, after: str = "apply") -> str:
    return "".join(difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True),
        fromfile=f"{name} (persistent definition)", tofile=f"{name} (after {after})"))


def _parse(xml_text: str) -> etree._Element:
    root = xmlsafe.parse(xml_text.encode(), what="domain XML")
    if root.tag != "domain":
        raise InputError("root element is not <domain>")
    return root


def _provenance_element(prov: Provenance) -> etree._Element:
    el = etree.Element(APPLIED_TAG, nsmap={APPLIED_PREFIX: APPLIED_NS})
    el.set("value", str(prov.value_kib))
    el.set("unit", "KiB")
    el.set("mode", prov.mode)
    el.set("version", prov.version)
    el.set("ledger-digest", prov.ledger_digest)
    return el
