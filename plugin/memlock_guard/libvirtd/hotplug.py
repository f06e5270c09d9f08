"""attach-device and detach-device: libvirt's hotplug, with the limit made right first.

Why: with ``<memtune><hard_limit>`` set, libvirt's qemuDomainAdjustMaxMemLock returns the
hard_limit itself at every hot-add, so QEMU's RLIMIT_MEMLOCK never grows, a second GPU
behind a vIOMMU fails to attach and a DIMM beyond the limit kills the VM
(accounting/hotplug.py). libvirt reads the *live* hard_limit at that moment
(vm->def), and ``virDomainSetMemoryParameters(AFFECT_LIVE)`` changes it without
touching RLIMIT_MEMLOCK. So "raise the live hard_limit, then attach" makes libvirt's
own adjust raise the running QEMU's limit during the attach, through libvirt alone.

``run()`` for attach:
1. judge each definition the flags touch (live, persistent) with the device added,
   by the rules of ``apply`` (plan(): short, or our own limit below the
   recommendation, means raise; never lower);
2. raise where needed: the live hard_limit through libvirt's memtune API (plus
   ``<mga:applied>`` through its metadata API), the persistent one by redefining it
   exactly as ``apply`` would (domain/edit.py; swap_hard_limit kept >= hard_limit);
3. attach with the same flags;
4. if anything fails, put back every limit raised in 2, in reverse order, and say so.
detach-device judges the definitions with the device taken out (to report what they
need then) and detaches; it changes no limit: lowering a live hard_limit lowers the
memory cgroup cap under a running QEMU (refused with EBUSY on cgroup v1 when usage is
above it), and the room it leaves is what a later re-attach needs.

Known gap: between the re-read before each raise and libvirt's own change there is no
compare-and-swap in libvirt; a concurrent memtune in those microseconds could be
overwritten (as with apply).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from lxml import etree

from ..accounting.report import Report, audit_record
from ..domain.edit import DEVICE_TAGS, add_device, metadata_child, raised_memtune, remove_device
from ..domain.hostdev import pci_address
from ..support import xmlsafe
from ..support.defaults import APPLIED_NS, APPLIED_PREFIX, MAX_DEVICE_XML_BYTES
from ..support.errors import InputError, MemlockGuardError
from ..support.units import human
from . import apply as applymod
from . import client as lc
from .reconcile import Judge

LIVE = "live"
PERSISTENT = "persistent"


@dataclass(frozen=True, slots=True, eq=False)
class Device:
    xml: str  # the file's text, handed to libvirt untouched
    element: etree._Element
    label: str  # "hostdev 0000:06:00.0", "memory dimm 1 GiB", ...


def parse_device(data: bytes, *, what: str) -> Device:
    """A device XML through the hardened parser; InputError (one line) when it is not one."""
    root = xmlsafe.parse(data, what=what, max_bytes=MAX_DEVICE_XML_BYTES)
    tag = root.tag if isinstance(root.tag, str) else "?"
    if tag not in DEVICE_TAGS:
        raise InputError(f"{what}: <{tag[:40]}> is not a device libvirt attaches "
                         f"(e.g. <hostdev>, <interface>, <disk>, <memory>)")
    return Device(data.decode("utf-8"), root, _label(root))


def _label(el: etree._Element) -> str:
    addr = el.find("source/address")
    if el.tag == "hostdev" and addr is not None:
        if addr.get("uuid"):
            return f"hostdev mdev {addr.get('uuid')}"
        return f"hostdev {pci_address(addr) or ''}".strip()
    if el.tag == "memory":
        size = el.find("target/size")
        what = f"memory {el.get('model') or 'dimm'}"
        if size is not None:
            try:
                from ..support.units import parse_scaled

                what += f" {human(parse_scaled(size.text, size.get('unit'), what='size'))}"
            except InputError:
                pass
        return what
    if el.tag == "interface":
        mac = el.find("mac")
        address = mac.get("address") if mac is not None else ""
        return f"interface {el.get('type') or ''} {address}".strip()
    if el.tag == "disk":
        target = el.find("target")
        return f"disk {target.get('dev') if target is not None else ''}".strip()
    return str(el.tag)


def targets(dom: Any, *, live: bool, config: bool, current: bool,
            persistent: bool) -> tuple[bool, bool]:
    """(live, config) as ``virsh attach-device`` resolves its flags (tools/virsh-domain.c
    cmdAttachDevice, libvirt 9.0): --config and --persistent touch the persistent
    definition; --live, and --persistent on a running domain, the live one; --current
    whichever the domain has now; no flag at all calls virDomainAttachDevice, which the
    QEMU driver runs as AFFECT_LIVE."""
    if current and (live or config or persistent):
        raise InputError("--current cannot be combined with --live, --config or "
                         "--persistent (as in virsh)")
    active = lc.is_active(dom)
    has_config = lc.is_persistent(dom)
    if current:
        want_live, want_config = active, not active
    else:
        want_config = config or persistent
        want_live = live or (persistent and active) or not (live or config or persistent)
    name = dom.name()
    if want_live and not active:
        raise InputError(f"domain {name!r} is not running; give --config to change its "
                         f"persistent definition (with no flag, as with virsh, only the "
                         f"running VM is changed)")
    if want_config and not has_config:
        raise InputError(f"domain {name!r} is transient: it has no persistent definition "
                         f"for --config")
    return want_live, want_config


@dataclass(frozen=True, slots=True)
class Judged:
    """One definition, judged with the device added (attach) or taken out (detach)."""

    which: str  # live | persistent
    before_xml: str  # the definition as read
    report: Report
    plan: applymod.Plan
    found: bool  # detach: the device was found in this definition
    swap_from: int | None
    swap_to: int | None  # set when swap_hard_limit rises with the hard_limit
    edit: applymod.Edit | None  # persistent, when raised: the definition apply writes
    old_applied: str | None  # live: the <mga:applied> before, to put back on failure
    policy: str | None = None  # where the policy it was judged with came from

    @property
    def raises(self) -> bool:
        return self.plan.action is applymod.Action.RAISE


@dataclass(frozen=True, slots=True)
class Step:
    action: str  # raise-hard-limit | attach | detach | restore-hard-limit
    definition: str | None  # live | persistent; None for the hotplug itself
    text: str
    from_bytes: int | None = None
    to_bytes: int | None = None
    status: str = "planned"  # planned | done | failed | skipped (after a failure)
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    domain: str
    uuid: str
    device: str
    verb: str  # attach | detach
    live: bool
    config: bool
    dry_run: bool
    judged: tuple[Judged, ...]
    steps: tuple[Step, ...]
    error: str | None = None  # why the hotplug did not happen
    restored: bool = False  # every limit raised before the failure was put back


def judge_definition(which: str, xml: str, device: Device, judge: Judge, *,
                     detach: bool) -> Judged:
    root = xmlsafe.parse(xml.encode(), what=f"the {which} definition")
    changed = copy.deepcopy(root)
    found = True
    if detach:
        found = remove_device(changed, device.element)
    else:
        add_device(changed, device.element)
    report, policy = judge(etree.tostring(changed, encoding="unicode"))
    plan = applymod.plan(report, applymod.read_provenance(root))
    if detach:  # never lowers, never raises: see the module docstring
        plan = replace(plan, action=applymod.Action.KEEP, new_hard_limit=None,
                       reason=_detach_reason(report, found))
    swap_from = report.domain.memtune.swap_hard_limit
    swap_to = None
    edit = None
    old_applied = None
    if plan.action is applymod.Action.RAISE:
        assert plan.new_hard_limit is not None
        applymod.check_expressible(plan.new_hard_limit, report.domain.name)
        new = raised_memtune(plan.current_hard_limit, swap_from, plan.new_hard_limit)
        if new is not None:
            swap_to = new[1]
        if which == PERSISTENT:
            edit = applymod.edit_with(root, plan, report, after="attach-device")
        else:
            el = metadata_child(root, APPLIED_NS)
            old_applied = None if el is None else _unqualified(el)
    return Judged(which, xml, report, plan, found, swap_from, swap_to, edit, old_applied,
                  policy.origin)


def _detach_reason(report: Report, found: bool) -> str:
    v = report.verdict
    hard = report.domain.memtune.hard_limit
    kept = (f"hard_limit {human(hard)} kept (detach-device never lowers a hard_limit)"
            if hard is not None else "no hard_limit: libvirt's own formula applies")
    if not found:
        return f"the device is not in this definition (libvirt decides); {kept}"
    return f"without the device it needs {human(v.required)} ({v.mode.value}); {kept}"


def plan_steps(judged: tuple[Judged, ...], *, detach: bool, live: bool,
               config: bool) -> list[Step]:
    steps = []
    for j in judged:
        if j.raises:
            steps.append(Step("raise-hard-limit", j.which,
                              f"raise the {j.which} hard_limit to "
                              f"{human(j.plan.new_hard_limit)} (was "
                              f"{_was(j.plan.current_hard_limit)})",
                              j.plan.current_hard_limit, j.plan.new_hard_limit))
    flags = " ".join(f for f, on in (("--live", live), ("--config", config)) if on)
    verb = "detach" if detach else "attach"
    steps.append(Step(verb, None, f"{verb} the device ({flags})"))
    return steps


def _was(value: int | None) -> str:
    return "not set" if value is None else human(value)


def run(dom: Any, device: Device, judge: Judge, *, live: bool, config: bool,
        detach: bool = False, dry_run: bool = False,
        audit: Callable[[dict[str, Any]], None] | None = None) -> Outcome:
    """Judge, raise, hotplug, and on failure put the limits back (module docstring)."""
    name, uuid = dom.name(), dom.UUIDString()
    judged: list[Judged] = []
    if live:
        judged.append(judge_definition(LIVE, lc.live_xml(dom), device, judge,
                                       detach=detach))
    if config:
        judged.append(judge_definition(PERSISTENT, lc.persistent_xml(dom), device, judge,
                                       detach=detach))
    steps = plan_steps(tuple(judged), detach=detach, live=live, config=config)
    out = Outcome(name, uuid, device.label, "detach" if detach else "attach", live, config,
                  dry_run, tuple(judged), tuple(steps))
    if dry_run:
        return out
    undo: list[tuple[Judged, str | None]] = []  # raised definitions, persistent XML written
    done: list[Step] = []
    try:
        for j in judged:
            if not j.raises:
                continue
            step = steps[len(done)]
            try:
                written = _raise(dom, j)
            except MemlockGuardError as e:
                done.append(replace(step, status="failed", error=str(e)))
                raise
            undo.append((j, written))
            done.append(replace(step, status="done"))
            if audit is not None:
                audit(_record(j, name, device, "apply"))
        hot = steps[len(done)]
        try:
            if detach:
                lc.detach_device(dom, device.xml, live=live, config=config)
            else:
                lc.attach_device(dom, device.xml, live=live, config=config)
        except MemlockGuardError as e:
            done.append(replace(hot, status="failed", error=str(e)))
            raise
        done.append(replace(hot, status="done"))
        return replace(out, steps=tuple(done))
    except MemlockGuardError as e:
        if isinstance(e, lc.LibvirtUnreachable):
            if not undo:
                raise
            left = " and ".join(j.which for j, _ in undo)
            raise lc.LibvirtUnreachable(f"{e}; the {left} hard_limit was raised and could "
                                        f"not be put back") from None
        done += [replace(s, status="skipped") for s in steps[len(done):]]
        restored = _undo(dom, undo, done, name, device, audit)
        return replace(out, steps=tuple(done), error=str(e), restored=restored)


def _raise(dom: Any, j: Judged) -> str | None:
    """Raise ``j``'s definition; the persistent XML as libvirt then holds it, for undo."""
    assert j.plan.new_hard_limit is not None
    if j.which == PERSISTENT:
        assert j.edit is not None
        if applymod.xml_digest(lc.persistent_xml(dom)) != applymod.xml_digest(j.before_xml):
            raise MemlockGuardError(f"the persistent definition of {dom.name()} changed while "
                                    f"it was judged; nothing changed, run it again")
        lc.define(dom.connect(), j.edit.new_xml)
        return lc.persistent_xml(dom)
    now = xmlsafe.parse(lc.live_xml(dom).encode(), what="the live definition")
    if _memtune(now) != (j.plan.current_hard_limit, j.swap_from):
        raise MemlockGuardError(f"the live memtune of {dom.name()} changed while it was "
                                f"judged; nothing changed, run it again")
    lc.set_memtune(dom, hard_limit=j.plan.new_hard_limit, live=True,
                   swap_hard_limit=j.swap_to, set_swap=j.swap_to is not None)
    element = applymod.provenance_element(j.plan, j.report)
    try:
        lc.set_metadata_element(dom, _unqualified(element), prefix=APPLIED_PREFIX,
                                namespace=APPLIED_NS, live=True)
    except MemlockGuardError:
        # This step failed as a whole: its own memtune goes back before anyone else's.
        lc.set_memtune(dom, hard_limit=j.plan.current_hard_limit, live=True,
                       swap_hard_limit=j.swap_from, set_swap=j.swap_to is not None)
        raise
    return None


def _undo(dom: Any, undo: list[tuple[Judged, str | None]], done: list[Step], name: str,
          device: Device, audit: Callable[[dict[str, Any]], None] | None) -> bool:
    """Put back, newest first, every limit raised; each is a step of its own."""
    ok = True
    for j, written in reversed(undo):
        step = Step("restore-hard-limit", j.which,
                    f"put the {j.which} hard_limit back to {_was(j.plan.current_hard_limit)}",
                    j.plan.new_hard_limit, j.plan.current_hard_limit)
        try:
            if j.which == PERSISTENT:
                if lc.persistent_xml(dom) != written:
                    raise MemlockGuardError("the persistent definition changed since it was "
                                            "raised; left as it is")
                lc.define(dom.connect(), j.before_xml)
            else:
                lc.set_memtune(dom, hard_limit=j.plan.current_hard_limit, live=True,
                               swap_hard_limit=j.swap_from, set_swap=j.swap_to is not None)
                lc.set_metadata_element(dom, j.old_applied, prefix=APPLIED_PREFIX,
                                        namespace=APPLIED_NS, live=True)
        except MemlockGuardError as e:
            ok = False
            done.append(replace(step, status="failed", error=str(e)))
            continue
        done.append(replace(step, status="done"))
        if audit is not None:
            audit(_record(j, name, device, "restore"))
    return ok


def _memtune(root: etree._Element) -> tuple[int | None, int | None]:
    from ..domain.memory import Memtune
    from ..domain.xmlmap import group

    m = Memtune.from_xml(group(root).get("memtune"))
    return m.hard_limit, m.swap_hard_limit


def _unqualified(el: etree._Element) -> str:
    """``<mga:applied>`` as virDomainSetMetadata takes it: the element without its
    namespace (libvirt puts it in the namespace given with the call)."""
    plain = etree.Element(etree.QName(el).localname)
    for key, value in el.attrib.items():
        plain.set(key, value)
    return etree.tostring(plain, encoding="unicode")


def _record(j: Judged, name: str, device: Device, action: str) -> dict[str, Any]:
    raised = action == "apply"
    return audit_record(
        "attach-device", j.report, action=action, policy=j.policy, definition=j.which,
        device=device.label,
        hard_limit_from=j.plan.current_hard_limit if raised else j.plan.new_hard_limit,
        hard_limit_to=j.plan.new_hard_limit if raised else j.plan.current_hard_limit,
        ledger_digest=j.plan.ledger_digest, reason=j.plan.reason)
