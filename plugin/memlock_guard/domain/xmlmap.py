"""Small typed accessors that map libvirt XML onto the frozen dataclasses.

Each device family module uses only these, so the rules for reading attributes,
yes/no switches and scaled integers live in one place.

They read the XML the way libvirt's XPath lookups do, checked against libvirt 9.0
with ``virsh define`` + ``dumpxml``:
- a path names the first match in document order *across repeated parents*:
  libvirt asks for ``./memtune/hard_limit[1]``, so with two ``<memtune>`` blocks the
  first hard_limit in either counts, and ``./devices/hostdev`` collects the hostdevs
  of every ``<devices>``. Duplicate elements: the first wins (``<memory>`` twice
  keeps the first), lists gather them all.
- an element's value is its XPath string-value, every descendant text node joined:
  ``<memory>10<!-- c -->24</memory>`` and ``<memory>10<x/>24</memory>`` are 1024 KiB.
- an empty value is the same as an absent one (virXPathString returns NULL for "").
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

from lxml import etree

from ..units import UINT_MAX, KiB, parse_scaled, parse_unsigned

Element = etree._Element


def string_value(el: Element) -> str:
    """XPath string-value: the text of the element and all its descendants, in order."""
    # lxml yields str for every parsed document; the stubs also allow bytes.
    return "".join(cast("Iterator[str]", el.itertext()))


def text(el: Element | None, path: str | None = None) -> str | None:
    node = el if path is None or el is None else el.find(path)
    if node is None:
        return None
    value = string_value(node).strip()
    return value or None


def attr(el: Element | None, name: str, path: str | None = None) -> str | None:
    node = el if path is None or el is None else el.find(path)
    if node is None:
        return None
    value = node.get(name)
    return value.strip() if value is not None else None


def first_attr(root: Element, path: str, name: str) -> str | None:
    """``string(path/@name)``: the attribute of the first ``path`` match that has it."""
    for node in root.iterfind(path):
        value = node.get(name)
        if value is not None:
            return value.strip()
    return None


def switch(value: str | None) -> bool | None:
    """libvirt's tristate yes/no and on/off attributes; anything else is 'not said'."""
    if value is None:
        return None
    v = value.lower()
    if v in ("yes", "on"):
        return True
    if v in ("no", "off"):
        return False
    return None


def scaled(el: Element | None, *, what: str, default: int = KiB) -> int | None:
    """Bytes of a ``<x unit='...'>N</x>`` element, or None when absent or empty."""
    if el is None:
        return None
    raw = string_value(el)
    if raw == "":
        return None
    return parse_scaled(raw, el.get("unit"), what=what, default=default)


def kib_attr(el: Element | None, name: str, *, what: str) -> int | None:
    """Bytes of a plain KiB attribute (video ``vram='16384'`` and friends).

    libvirt keeps these as unsigned int KiB (virStrToLong_uip), so anything above
    UINT_MAX KiB (4 TiB) is an error there and here; an empty value means unset.
    """
    raw = el.get(name) if el is not None else None
    if raw is None or raw == "":
        return None
    return parse_unsigned(raw, what=f"{what} {name}=", limit=UINT_MAX) * KiB


def count(el: Element | None, name: str, *, what: str) -> int | None:
    """An unsigned int (virXPathUInt / virXMLPropUInt); None when absent or empty."""
    if el is None:
        return None
    raw = string_value(el) if name == "" else el.get(name)
    if raw is None or raw == "":
        return None
    return parse_unsigned(raw, what=what, limit=UINT_MAX)


def address_type(el: Element) -> str | None:
    return attr(el, "type", "address")
