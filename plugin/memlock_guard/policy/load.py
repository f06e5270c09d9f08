"""The operator's policy: the host file, the per-domain override, and the Settings they give.

The host file is ``/etc/memlock-guard/policy.xml`` (``--policy`` or
``MEMLOCK_GUARD_POLICY`` point elsewhere), root ``<policy>`` in namespace
``urn:memlock-guard:policy:1``, every element optional::

    <policy xmlns="urn:memlock-guard:policy:1">
      <mode>auto</mode>                       strict | tolerant | auto
      <on-shortfall>refuse</on-shortfall>     refuse | warn
      <adjust><migrate/><restore/></adjust>   which ops may print a raised hard_limit
      <margin unit="MiB">64</margin>
      <zero-page-allowance unit="KiB">0</zero-page-allowance>   or: unlimited
      <on-error>allow</on-error>              allow | refuse
      <plugins><allow>NAME</allow></plugins>
      <audit-log>/var/log/memlock-guard/audit.jsonl</audit-log>
      <kubevirt-version>1.9.0</kubevirt-version>            the cluster's KubeVirt
      <kubevirt-overhead-ratio>1.0</kubevirt-overhead-ratio>   its CR's overhead ratio
      <hotplug-reserve><vfio-devices>0</vfio-devices></hotplug-reserve>
    </policy>

A domain may override the first five, and hotplug-reserve, inside ``<metadata><mg:policy
xmlns:mg="urn:memlock-guard:policy:1">``. ``on-error``, ``plugins`` and ``audit-log`` are
host-only: whoever can edit a domain must not load code into a root process, switch off
the fail-safe or hide the audit trail; the two KubeVirt elements describe the cluster,
not a domain. The override is held to the same grammar, so a
host-only element there is an error, not silently dropped.

``schemas/policy.rng`` is the published grammar (editors, packaging checks) and is
enforced here too; the checks in this module run first because RelaxNG's own messages
("Extra element mode in interleave", line 0) do not tell an operator what to fix.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, Any

from lxml import etree

from ..accounting.modes import Mode
from ..support import xmlsafe
from ..support.defaults import MAX_POLICY_BYTES, POLICY_NS, salvage
from ..support.errors import InputError
from ..support.units import parse_scaled
from . import grammar
from .model import (
    ADJUSTABLE_OPS,
    DEFAULTS,
    HOST_ONLY,
    MAX_RESERVE_VFIO_DEVICES,
    OnError,
    OnShortfall,
    Policy,
    PolicyError,
    policy_path,
)

if TYPE_CHECKING:
    from ..domain import Domain

NS = POLICY_NS


def load(path: str | None = None, *, named: bool | None = None) -> Policy:
    """The host policy from ``path`` (default: policy_path()); InputError when it is bad."""
    if path is None:
        path, was_named = policy_path()
    else:
        was_named = True
    if named is not None:
        was_named = named
    data = _read_regular_file(path, missing_ok=not was_named)
    if data is None:
        return DEFAULTS
    try:
        return parse(data, what=f"policy {path}", origin=path)
    except InputError as e:
        on_error, audit_log = salvage(data)
        raise PolicyError(str(e), on_error=OnError(on_error) if on_error else None,
                          audit_log=audit_log) from None


def parse(data: bytes, *, what: str = "policy", origin: str = "policy") -> Policy:
    """A host policy document; every error names ``what``, the line and the element."""
    root = xmlsafe.parse(data, what=what, max_bytes=MAX_POLICY_BYTES)
    _expect_root(root, what)
    values = _interpret(root, what, host=True)
    grammar.validate(root, what, host=True)
    return DEFAULTS._replace(origin=origin, **values)


def override(base: Policy, element: bytes | None, *, domain_name: str = "domain") -> Policy:
    """``base`` with a domain's ``<mg:policy>`` metadata element (serialised) laid over it."""
    if element is None:
        return base
    what = f"{domain_name}'s <metadata> policy"
    root = xmlsafe.parse(element, what=what, max_bytes=MAX_POLICY_BYTES)
    _expect_root(root, what)
    _adopt_children(root)
    values = _interpret(root, what, host=False)
    grammar.validate(root, what, host=False)
    if not values:
        return base
    names = tuple(_ELEMENT_OF[k] for k in values)
    return base._replace(origin=f"{base.origin} + {domain_name}'s <metadata>",
                   overridden=names, **values)


def for_domain(base: Policy, domain: Domain) -> Policy:
    return override(base, domain.metadata_element("policy"), domain_name=domain.name)


def _hotplug_reserve(el: etree._Element, what: str) -> int:
    """``<hotplug-reserve><vfio-devices>N</vfio-devices></hotplug-reserve>``: N (0 when
    the element is empty)."""
    if (el.text or "").strip():
        raise InputError(f"{_where(what, el)} has stray text; expected <vfio-devices>")
    count: int | None = None
    for child in el:
        if child.tag != _q("vfio-devices"):
            raise InputError(f"{_where(what, child)} inside <hotplug-reserve>: expected "
                             f"<vfio-devices>")
        if count is not None:
            raise InputError(f"{_where(what, child)} appears more than once in "
                             f"<hotplug-reserve>")
        if len(child):
            raise InputError(f"{_where(what, child)} takes a number, not child elements")
        raw = (child.text or "").strip()
        if not raw.isascii() or not raw.isdigit() or int(raw) > MAX_RESERVE_VFIO_DEVICES:
            shown = raw if len(raw) <= 30 else raw[:30] + "…"
            raise InputError(f"{_where(what, child)} is {shown!r}; expected a whole number "
                             f"from 0 to {MAX_RESERVE_VFIO_DEVICES}")
        if (child.tail or "").strip():
            raise InputError(f"{_where(what, child)} is followed by stray text")
        count = int(raw)
    return count or 0


# -- reading ---------------------------------------------------------------------------

def _read_regular_file(path: str, *, missing_ok: bool) -> bytes | None:
    """The file's bytes; None when it is absent and ``missing_ok``.

    O_NONBLOCK and the S_ISREG check: a policy path that is (or links to) a FIFO or a
    device must fail at once, not block libvirtd's start path or stream /dev/zero.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise InputError(f"policy {path} does not exist") from None
    except OSError as e:
        raise InputError(f"cannot read policy {path}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"policy {path} is not a regular file")
        if st.st_size > MAX_POLICY_BYTES:
            raise InputError(f"policy {path} is larger than {MAX_POLICY_BYTES // 1024} KiB")
        chunks = []
        total = 0
        while total <= MAX_POLICY_BYTES:
            chunk = os.read(fd, MAX_POLICY_BYTES + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as e:
        raise InputError(f"cannot read policy {path}: {e.strerror or e}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > MAX_POLICY_BYTES:
        raise InputError(f"policy {path} is larger than {MAX_POLICY_BYTES // 1024} KiB")
    return data


# -- interpreting ----------------------------------------------------------------------

_ELEMENT_OF = {
    "mode": "mode", "on_shortfall": "on-shortfall", "adjust": "adjust", "margin": "margin",
    "zero_page_allowance": "zero-page-allowance", "on_error": "on-error",
    "plugins": "plugins", "audit_log": "audit-log", "kubevirt_version": "kubevirt-version",
    "kubevirt_overhead_ratio": "kubevirt-overhead-ratio",
    "reserve_vfio_devices": "hotplug-reserve",
}
_FIELD_OF = {v: k for k, v in _ELEMENT_OF.items()}


def _q(local: str) -> str:
    return f"{{{NS}}}{local}"


def _where(what: str, el: etree._Element) -> str:
    line = f" line {el.sourceline}" if el.sourceline else ""
    return f"{what}{line}: <{_local(el)}>"


def _local(el: etree._Element) -> str:
    return etree.QName(el).localname if isinstance(el.tag, str) else "?"


def _expect_root(root: etree._Element, what: str) -> None:
    if root.tag != _q("policy"):
        tag = root.tag if isinstance(root.tag, str) else "?"
        raise InputError(f"{what} line {root.sourceline or 1}: root element is "
                         f"<{tag[:80]}>, expected <policy xmlns=\"{NS}\">")


def _adopt_children(root: etree._Element) -> None:
    """Put un-namespaced children into our namespace.

    ``virsh metadata --uri … --key mg --set '<policy><mode>…'`` gives only the root
    element the namespace; the children keep none. Both spellings mean the same thing.
    """
    for el in root.iter():
        if isinstance(el.tag, str) and not el.tag.startswith("{"):
            el.tag = _q(el.tag)


def _text(el: etree._Element, what: str, choices: tuple[str, ...]) -> str:
    if len(el):
        raise InputError(f"{_where(what, el)} takes text, not child elements")
    value = (el.text or "").strip()
    if value not in choices:
        shown = value if len(value) <= 30 else value[:30] + "…"
        raise InputError(f"{_where(what, el)} is {shown!r}; expected one of "
                         f"{', '.join(choices)}")
    return value


def _size(el: etree._Element, what: str) -> int:
    if len(el):
        raise InputError(f"{_where(what, el)} takes a number, not child elements")
    # Surrounding whitespace is fine in a policy, as in the grammar's xsd:unsignedLong.
    return parse_scaled((el.text or "").strip(), el.get("unit"), what=_where(what, el))


def _interpret(root: etree._Element, what: str, *, host: bool) -> dict[str, Any]:
    """The fields a document sets, checked, keyed by Policy field name."""
    values: dict[str, Any] = {}
    if (root.text or "").strip():
        raise InputError(f"{_where(what, root)} has stray text; settings go in child elements")
    for el in root:
        name = _local(el)
        if not isinstance(el.tag, str) or el.tag != _q(name):
            raise InputError(f"{_where(what, el)} is not in namespace {NS}")
        if name not in _FIELD_OF:
            raise InputError(f"{_where(what, el)} is not a policy setting (known: "
                             f"{', '.join(_FIELD_OF)})")
        if not host and name in HOST_ONLY:
            raise InputError(f"{_where(what, el)} can only be set in the host policy file, "
                             f"not per domain")
        key = _FIELD_OF[name]
        if key in values:
            raise InputError(f"{_where(what, el)} appears more than once")
        if (el.tail or "").strip():
            raise InputError(f"{_where(what, el)} is followed by stray text")
        values[key] = _value(el, name, what)
    return values


def _value(el: etree._Element, name: str, what: str) -> Any:
    if name == "mode":
        return Mode(_text(el, what, ("strict", "tolerant", "auto")))
    if name == "on-shortfall":
        return OnShortfall(_text(el, what, ("refuse", "warn")))
    if name == "on-error":
        return OnError(_text(el, what, ("allow", "refuse")))
    if name == "margin":
        return _size(el, what)
    if name == "zero-page-allowance":
        if (el.text or "").strip() == "unlimited" and el.get("unit") is None:
            return None
        return _size(el, what)
    if name == "adjust":
        ops: list[str] = []
        for child in el:
            op = _local(child)
            if child.tag != _q(op) or op not in ADJUSTABLE_OPS:
                raise InputError(f"{_where(what, child)} inside <adjust>: expected "
                                 f"<migrate/> or <restore/>")
            if op in ops:
                raise InputError(f"{_where(what, child)} appears more than once in <adjust>")
            ops.append(op)
        return frozenset(ops)
    if name == "plugins":
        names: list[str] = []
        for child in el:
            if child.tag != _q("allow"):
                raise InputError(f"{_where(what, child)} inside <plugins>: expected <allow>")
            plugin = (child.text or "").strip()
            if not plugin:
                raise InputError(f"{_where(what, child)} names no plugin")
            if plugin not in names:
                names.append(plugin)
        return tuple(names)
    if name in ("kubevirt-version", "kubevirt-overhead-ratio"):
        from ..baselines import kubevirt

        if len(el):
            raise InputError(f"{_where(what, el)} takes text, not child elements")
        value = (el.text or "").strip()
        if name == "kubevirt-version":
            return str(kubevirt.parse_version(value, what=_where(what, el)))
        return kubevirt.parse_ratio(value, what=_where(what, el))
    if name == "audit-log":
        path = (el.text or "").strip()
        if not path.startswith("/"):
            raise InputError(f"{_where(what, el)} must be an absolute path")
        return path
    if name == "hotplug-reserve":
        return _hotplug_reserve(el, what)
    raise AssertionError(name)  # _FIELD_OF and this function list the same names


