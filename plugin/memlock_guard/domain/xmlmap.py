"""Small typed accessors that map libvirt XML onto the immutable records (NamedTuples).

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

from collections.abc import Iterable, Iterator
from typing import cast

from lxml import etree

from ..support.units import UINT_MAX, KiB, parse_scaled, parse_unsigned

Element = etree._Element


def string_value(el: Element) -> str:
    """XPath string-value: the text of the element and all its descendants, in order."""
    if not len(el):  # no child elements: the text node is all there is
        return el.text or ""
    # lxml yields str for every parsed document; the stubs also allow bytes.
    return "".join(cast("Iterator[str]", el.itertext()))


def first(el: Element, path: str) -> Element | None:
    """``el.find(path)`` for a plain ``a/b/c`` path: the first match in document order
    across repeated parents. A loop over the children, three times quicker than
    lxml's ElementPath, which the hook pays for on every VM start."""
    if "/" not in path:
        for c in el:
            if c.tag == path:
                return c
        return None
    for c in _walk(el, path.split("/"), 0):
        return c
    return None


def every(el: Element, path: str) -> list[Element]:
    """``el.findall(path)`` for a plain ``a/b/c`` path (``*``: any element)."""
    if "/" not in path and path != "*":
        return [c for c in el if c.tag == path]
    return list(_walk(el, path.split("/"), 0))


def _walk(el: Element, parts: list[str], i: int) -> Iterator[Element]:
    tag = parts[i]
    last = i == len(parts) - 1
    for c in el:
        if c.tag == tag or (tag == "*" and isinstance(c.tag, str)):
            if last:
                yield c
            else:
                yield from _walk(c, parts, i + 1)


# Children grouped by tag, in document order: one pass over an element, then each
# ``./tag[1]`` is ``one(kids, tag)`` and ``./tag/sub`` is ``first_in(kids.get(tag), sub)``.
Kids = dict[str, list[Element]]
_NONE: list[Element] = []


def group(el: Element) -> Kids:
    return group_into({}, el)


def group_into(out: Kids, children: Iterable[Element]) -> Kids:
    """Add ``children`` to ``out`` by tag, after what is there (document order)."""
    for c in children:
        t = c.tag
        lst = out.get(t)
        if lst is None:
            out[t] = [c]
        else:
            lst.append(c)
    return out


def firsts(el: Element, tags: tuple[str, ...]) -> list[Element | None]:
    """``./tag[1]`` for each of ``tags``, in one pass over the children of ``el``:
    cheaper than group() when an element has only single children worth reading."""
    out: list[Element | None] = [None] * len(tags)
    for c in el:
        t = c.tag
        if t in tags:
            i = tags.index(t)
            if out[i] is None:
                out[i] = c
    return out


def one(kids: Kids, tag: str) -> Element | None:
    lst = kids.get(tag)
    return lst[0] if lst else None


def first_in(parents: list[Element] | None, tag: str) -> Element | None:
    """``parent/tag[1]`` across repeated parents: the first match in document order."""
    for p in parents or _NONE:
        for c in p:
            if c.tag == tag:
                return c
    return None


def first_attr_in(parents: list[Element] | None, tag: str, name: str) -> str | None:
    """``string(parent/tag/@name)``: the attribute of the first match that has it."""
    for p in parents or _NONE:
        for c in p:
            if c.tag == tag:
                value = c.get(name)
                if value is not None:
                    return value.strip()
    return None


def text(el: Element | None, path: str | None = None) -> str | None:
    node = el if path is None or el is None else first(el, path)
    if node is None:
        return None
    value = string_value(node).strip()
    return value or None


def attr(el: Element | None, name: str, path: str | None = None) -> str | None:
    node = el if path is None or el is None else first(el, path)
    if node is None:
        return None
    value = node.get(name)
    return value.strip() if value is not None else None


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
