"""Small typed accessors that map libvirt XML onto the frozen dataclasses.

Each device family module uses only these, so the rules for reading attributes,
yes/no switches and scaled integers live in one place.
"""

from __future__ import annotations

from lxml import etree

from ..errors import InputError
from ..units import KiB, parse_scaled

Element = etree._Element


def text(el: Element | None, path: str | None = None) -> str | None:
    node = el if path is None or el is None else el.find(path)
    if node is None or node.text is None:
        return None
    value = node.text.strip()
    return value or None


def attr(el: Element | None, name: str, path: str | None = None) -> str | None:
    node = el if path is None or el is None else el.find(path)
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
    """Bytes of a ``<x unit='...'>N</x>`` element, or None when absent."""
    if el is None:
        return None
    return parse_scaled(el.text, el.get("unit"), what=what, default=default)


def kib_attr(el: Element | None, name: str, *, what: str) -> int | None:
    """Bytes of a plain KiB attribute (video ``vram='16384'`` and friends)."""
    raw = attr(el, name)
    if raw is None:
        return None
    return parse_scaled(raw, None, what=f"{what} {name}=")


def count(el: Element | None, name: str, *, what: str) -> int | None:
    raw = text(el) if name == "" else attr(el, name)
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 9:
        raise InputError(f"{what} has an invalid count {raw[:20]!r}")
    return int(raw)


def address_type(el: Element) -> str | None:
    return attr(el, "type", "address")
