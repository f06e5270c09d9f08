"""libvirt scaled integers and human-readable sizes.

libvirt parses ``<memory unit='...'>N</memory>`` with virScaleInteger: the unit is
case-insensitive, an absent unit means KiB, ``KB`` is 1000 while ``K``/``KiB`` is 1024,
and the result is rounded *up* to whole KiB (virDomainParseMemory). Values above
LLONG_MAX bytes are refused, as libvirt does on 64-bit hosts.
"""

from __future__ import annotations

from .errors import InputError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

# libvirt refuses anything larger on 64-bit hosts (virDomainParseMemory, "capped").
MAX_BYTES = (1 << 63) - 1

_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}


def unit_scale(unit: str | None, default: int = KiB) -> int:
    """The multiplier libvirt uses for ``unit``; raises ValueError for junk."""
    if unit is None or unit == "":
        return default
    u = unit.lower()
    if u in ("b", "byte", "bytes"):
        return 1
    power = _POWERS.get(u[0])
    if power is None:
        raise ValueError(f"unknown unit {unit!r}")
    rest = u[1:]
    if rest in ("", "ib"):
        return int(1024**power)
    if rest == "b":
        return int(1000**power)
    raise ValueError(f"unknown unit {unit!r}")


def parse_scaled(text: str | None, unit: str | None, *, what: str, default: int = KiB) -> int:
    """Bytes for a libvirt scaled integer, rounded up to whole KiB.

    ``what`` names the element in error messages, e.g. ``<memory>``.
    """
    if text is None or not text.strip():
        raise InputError(f"{what} has no value")
    digits = text.strip()
    # libvirt uses strtoull in base 10 and refuses a sign (virStrToLong_ullp).
    if not digits.isascii() or not digits.isdigit():
        raise InputError(f"{what} has an invalid value {_clip(text)!r}: expected a whole number")
    try:
        scale = unit_scale(unit, default)
    except ValueError:
        raise InputError(f"{what} has an unknown unit {_clip(unit or '')!r}") from None
    if len(digits) > 40:
        raise InputError(f"{what} value is too large")
    value = int(digits) * scale
    if value > MAX_BYTES:
        raise InputError(f"{what} value {digits} {unit or 'KiB'} is too large")
    return round_up(value, KiB)


def round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def pow2ceil(value: int) -> int:
    """The smallest power of two >= value (QEMU's pow2ceil; 0 stays 0)."""
    if value <= 1:
        return value
    return 1 << (value - 1).bit_length()


def human(n: int | None) -> str:
    """``1.5 GiB``-style text; exact units are shown without decimals."""
    if n is None:
        return "unlimited"
    sign = "-" if n < 0 else ""
    n = abs(n)
    for name, size in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            if n % size == 0:
                return f"{sign}{n // size} {name}"
            return f"{sign}{n / size:.2f} {name}"
    return f"{sign}{n} B"


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def parse_size(text: str, *, what: str) -> int:
    """A size typed by a person on the command line: ``64MiB``, ``1G``, ``4096`` (bytes)."""
    import re

    m = re.fullmatch(r"\s*(\d{1,20})\s*([A-Za-z]*)\s*", text)
    if not m:
        raise InputError(f"{what} {_clip(text)!r} is not a size like 64MiB")
    try:
        scale = unit_scale(m.group(2) or "b", default=1)
    except ValueError:
        raise InputError(f"{what} has an unknown unit {_clip(m.group(2))!r}") from None
    value = int(m.group(1)) * scale
    if value > MAX_BYTES:
        raise InputError(f"{what} is too large")
    return value
