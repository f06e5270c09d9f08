"""Raising a persistent ``<memtune><hard_limit>``: the decision and the XML edit, pure.

``apply_to_xml(xml_text, report)`` takes the persistent definition (as libvirt's
``XMLDesc(INACTIVE|SECURE)`` gives it) and the Report judged from that same text, and
returns what to do, the new XML text and a unified diff. No I/O: the libvirt round trip
(re-read, compare digests, defineXML) lives in reconcile.py.

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
from ..accounting.verdict import Outcome
from ..baselines.libvirt import LIBVIRT_UNLIMITED
from ..support import xmlsafe
from ..support.errors import InputError
from ..support.units import KiB, human, parse_scaled

APPLIED_NS = "urn:memlock-guard:applied:1"
APPLIED_PREFIX = "mga"
APPLIED_TAG = f"{{{APPLIED_NS}}}applied"

# libvirt's element order at the top of <domain> (virDomainDefFormatInternal): a new
# <metadata> goes after the first group, a new <memtune> after the second, which is
# where libvirt itself will print them.
_BEFORE_METADATA = ("name", "uuid", "genid", "title", "description")
_BEFORE_MEMTUNE = (*_BEFORE_METADATA, "metadata", "maxMemory", "memory", "currentMemory",
                   "blkiotune")


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
class Result:
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
    """
    items = []
    for item in ledger.items:
        d = {name: _plain(value) for name, value in item._asdict().items()
             if name != "note"}
        items.append(d)
    blob = json.dumps({"containers": ledger.containers, "items": items},
                      sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


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
    md = root.find("metadata")
    if md is None:
        return None
    for child in md:
        if isinstance(child.tag, str) and child.tag.startswith("{" + APPLIED_NS + "}"):
            return child
    return None


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

    if v.outcome is Outcome.UNLIMITED:
        return keep(f"unlimited: {v.limit.explanation}")
    if v.outcome is Outcome.SHORT:
        assert v.headroom is not None
        return raise_to(v.recommended_hard_limit,
                        f"short by {human(-v.headroom)}: needs {human(v.required)} "
                        f"({v.mode.value}) but QEMU gets {human(v.limit.bytes)} "
                        f"({v.limit.source})")
    if ours and provenance is not None and provenance.ledger_digest != digest:
        assert current is not None
        if v.recommended_hard_limit > current:
            return raise_to(v.recommended_hard_limit,
                            f"devices changed since memlock-guard set {human(current)}: "
                            f"recommended now {human(v.recommended_hard_limit)} "
                            f"(needs {human(v.required)}, footprint {human(v.footprint)})")
        return keep(f"fits: devices changed, but the hard_limit memlock-guard set "
                    f"({human(current)}) still covers them")
    if v.required == 0:
        return keep("fits: nothing pins guest memory (no VFIO, NVMe or vDPA device)")
    assert v.headroom is not None
    whose = "memlock-guard's hard_limit" if ours else v.limit.source
    return keep(f"fits: needs {human(v.required)} ({v.mode.value}), QEMU gets "
                f"{human(v.limit.bytes)} ({whose}), headroom {human(v.headroom)}")


# -- the edit --------------------------------------------------------------------------

def apply_to_xml(xml_text: str, report: Report, *, name: str | None = None) -> Result:
    """The persistent XML with hard_limit raised and provenance recorded, if needed.

    ``report`` must be the judgement of this very text. Idempotent: feeding the output
    back (with its own report) gives KEEP and the same text.
    """
    root = _parse(xml_text)
    old = serialize(root)
    p = plan(report, read_provenance(root))
    if p.action is Action.KEEP:
        return Result(p, old, old, "")
    assert p.new_hard_limit is not None
    if p.new_hard_limit // KiB >= LIBVIRT_UNLIMITED:
        # libvirt reads this value as "unlimited" and anything above as an overflow; no
        # finite hard_limit covers such a domain, and writing "unlimited" is not ours to do.
        raise InputError(f"{report.domain.name} would need a hard_limit of "
                         f"{human(p.new_hard_limit)}, beyond the largest libvirt accepts "
                         f"({human((LIBVIRT_UNLIMITED - 1) * KiB)}); not changed")
    _set_hard_limit(root, p.new_hard_limit, p.current_hard_limit)
    _set_provenance(root, Provenance(value_kib=p.new_hard_limit // KiB,
                                     mode=report.verdict.mode.value, version=__version__,
                                     ledger_digest=p.ledger_digest))
    new = serialize(root)
    return Result(p, old, new, unified_diff(old, new, name or report.domain.name))


def unified_diff(old: str, new: str, name: str) -> str:
    return "".join(difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True),
        fromfile=f"{name} (persistent definition)", tofile=f"{name} (after apply)"))


def _parse(xml_text: str) -> etree._Element:
    root = xmlsafe.parse(xml_text.encode(), what="domain XML")
    if root.tag != "domain":
        raise InputError("root element is not <domain>")
    return root


def _set_hard_limit(root: etree._Element, new: int, current: int | None) -> None:
    memtune = root.find("memtune")
    if memtune is None:
        memtune = etree.Element("memtune")
        _insert(root, _index_after(root, _BEFORE_MEMTUNE), memtune)
    hard = memtune.find("hard_limit")
    if hard is None:
        hard = etree.Element("hard_limit")
        _insert(memtune, 0, hard)  # libvirt prints hard, soft, swap_hard, min_guarantee
    hard.set("unit", "KiB")
    hard.text = str(new // KiB)
    # libvirt refuses hard_limit > swap_hard_limit at define. Raise swap_hard_limit with
    # it, keeping the swap allowance (swap_hard - hard) the operator had given.
    swap = memtune.find("swap_hard_limit")
    if swap is not None:
        swap_bytes = parse_scaled(swap.text, swap.get("unit"), what="<swap_hard_limit>")
        if swap_bytes < new:
            allowance = swap_bytes - current if current and swap_bytes >= current else 0
            swap.set("unit", "KiB")
            swap.text = str((new + allowance) // KiB)


def _set_provenance(root: etree._Element, prov: Provenance) -> None:
    md = root.find("metadata")
    if md is None:
        md = etree.Element("metadata")
        _insert(root, _index_after(root, _BEFORE_METADATA), md)
    el = etree.Element(APPLIED_TAG, nsmap={APPLIED_PREFIX: APPLIED_NS})
    el.set("value", str(prov.value_kib))
    el.set("unit", "KiB")
    el.set("mode", prov.mode)
    el.set("version", prov.version)
    el.set("ledger-digest", prov.ledger_digest)
    old = _applied_element(root)
    if old is not None:
        el.tail = old.tail
        md.replace(old, el)
    else:
        _insert(md, len(md), el)


def _index_after(parent: etree._Element, names: tuple[str, ...]) -> int:
    """Position just after the last child named in ``names`` (0 when none is there)."""
    index = 0
    for i, child in enumerate(parent):
        if isinstance(child.tag, str) and child.tag in names:
            index = i + 1
    return index


def _depth(el: etree._Element) -> int:
    return sum(1 for _ in el.iterancestors())


def _insert(parent: etree._Element, index: int, child: etree._Element) -> None:
    """Insert ``child`` keeping libvirt's layout: one element per line, 2-space indents.

    Only the whitespace next to the new element changes; a document that is not
    indented (root without leading whitespace) stays unindented.
    """
    root = parent.getroottree().getroot()
    pretty = bool(root.text) and not (root.text or "").strip()
    inner = "\n" + "  " * (_depth(parent) + 1) if pretty else None
    outer = "\n" + "  " * _depth(parent) if pretty else None
    if len(parent) == 0:
        parent.text = inner
        child.tail = outer
        parent.append(child)
    elif index == 0:
        child.tail = parent.text if pretty else None
        parent.text = inner
        parent.insert(0, child)
    else:
        prev = parent[index - 1]
        child.tail = prev.tail
        prev.tail = inner
        parent.insert(index, child)


# -- writing back, in libvirt's style ---------------------------------------------------

def serialize(root: etree._Element) -> str:
    """The tree as libvirt would print it, so unchanged lines stay byte-identical.

    libvirt (virXMLFormat*) quotes attributes with ' and escapes < > & ' " in text and
    attributes; the contents of <metadata> it prints with libxml2 (double quotes), as
    lxml does. The result is checked to mean exactly the tree (C14N); were it not,
    plain lxml output is returned, which libvirt reads the same.
    """
    out: list[str] = []
    _write(root, out, {})
    text = "".join(out) + "\n"
    try:
        same = (etree.tostring(etree.fromstring(text.encode()), method="c14n")
                == etree.tostring(root, method="c14n"))
    except etree.XMLSyntaxError:
        same = False
    return text if same else etree.tostring(root, encoding="unicode") + "\n"


def _foreign(el: etree._Element, inherited: dict[str | None, str]) -> str:
    """A <metadata> child as libvirt prints it: libxml2's serialisation, declaring the
    namespaces it declares itself and those it uses, not every one of the root's."""
    own = [p for p, uri in el.nsmap.items() if inherited.get(p) != uri and p is not None]
    copy = etree.fromstring(etree.tostring(el, with_tail=False))
    etree.cleanup_namespaces(copy, keep_ns_prefixes=own)
    return etree.tostring(copy, encoding="unicode", with_tail=False)


_ESCAPES = str.maketrans({"<": "&lt;", ">": "&gt;", "&": "&amp;", "'": "&apos;",
                          '"': "&quot;"})


def _esc(s: str) -> str:
    return s.translate(_ESCAPES)


def _qname(el: etree._Element, tag: str) -> str:
    if not tag.startswith("{"):
        return tag
    uri, local = tag[1:].split("}", 1)
    if uri == "http://www.w3.org/XML/1998/namespace":
        return f"xml:{local}"
    for prefix, value in el.nsmap.items():
        if value == uri:
            return f"{prefix}:{local}" if prefix else local
    return local


def _write(el: etree._Element, out: list[str], inherited: dict[str | None, str]) -> None:
    if not isinstance(el.tag, str):  # a comment or PI (xmlsafe drops them; be safe)
        out.append(etree.tostring(el, encoding="unicode", with_tail=False))
        return
    name = _qname(el, el.tag)
    parts = [f"<{name}"]
    for key, value in el.attrib.items():
        parts.append(f" {_qname(el, str(key))}='{_esc(str(value))}'")
    nsmap = dict(el.nsmap)
    for prefix, uri in nsmap.items():
        if inherited.get(prefix) != uri:
            parts.append(f" xmlns:{prefix}='{_esc(uri)}'" if prefix
                         else f" xmlns='{_esc(uri)}'")
    if len(el) == 0 and el.text is None:
        out.append("".join(parts) + "/>")
        return
    out.append("".join(parts) + ">")
    if el.text is not None:
        out.append(_esc(el.text))
    # Only the domain's own <metadata> (a child of the root) holds foreign XML.
    metadata = el.tag == "metadata" and _depth(el) == 1
    for child in el:
        if metadata and isinstance(child.tag, str):
            out.append(_foreign(child, nsmap))
        else:
            _write(child, out, nsmap)
        if child.tail is not None:
            out.append(_esc(child.tail))
    out.append(f"</{name}>")
