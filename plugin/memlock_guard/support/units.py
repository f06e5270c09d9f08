"""libvirt scaled integers and human-readable sizes.

libvirt parses ``<memory unit='...'>N</memory>`` with virScaleInteger: the unit is
case-insensitive, an absent unit means KiB, ``KB`` is 1000 while ``K``/``KiB`` is 1024,
and the result is rounded *up* to whole KiB (virDomainParseMemory). Values above
LLONG_MAX bytes, or 2**53 KiB after rounding, are refused, as libvirt does on 64-bit
hosts. Checked against libvirt 9.0 with ``virsh define`` (see parse_scaled).
"""

from __future__ import annotations

import functools
import re

from .errors import InputError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

# virScaleInteger's limit for memory sizes on 64-bit hosts (LLONG_MAX bytes) ...
MAX_BYTES = (1 << 63) - 1
# ... and what virDomainParseMemory then keeps: below 2**53 KiB after rounding up, the
# same bound as VIR_DOMAIN_MEMORY_PARAM_UNLIMITED for <memtune> limits.
MAX_MEMORY_BYTES = ((1 << 53) - 1) * 1024
ULLONG_MAX = (1 << 64) - 1
UINT_MAX = (1 << 32) - 1

# strtoull in the C locale: optional leading isspace(), one optional sign, digits. The
# sign may only be '+': virStrToLong_*p refuse a '-' (even "-0").
_UNSIGNED = re.compile(r"[ \t\n\v\f\r]*\+?([0-9]+)")

_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}


@functools.lru_cache(maxsize=256)  # a handful of units, on every size read
def unit_scale(unit: str | None, default: int = KiB) -> int:
    """The multiplier libvirt uses for ``unit`` (virScaleInteger); ValueError for junk.

    Case-insensitive; ``b``/``byte``/``bytes`` = 1; ``k``/``KiB`` = 1024 and ``KB`` =
    1000, likewise M, G, T, P, E. Nothing is stripped: libvirt refuses ``' KiB'``.
    """
    if unit is None or unit == "":
        return default
    if not unit.isascii():  # libvirt folds case in ASCII only: no Kelvin sign for 'k'
        raise ValueError(f"unknown unit {unit!r}")
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


def parse_unsigned(text: str, *, what: str, limit: int = ULLONG_MAX) -> int:
    """A whole number as libvirt's virStrToLong_ullp/_uip read it (strtoull, base 10).

    Leading C whitespace and one ``+`` are accepted; a ``-`` anywhere, trailing
    characters (even a space), an empty string or a value above ``limit`` are errors.
    """
    if text.isascii() and text.isdigit() and len(text) <= 20:  # the usual case
        value = int(text)
        if value <= limit:
            return value
    m = _UNSIGNED.fullmatch(text)
    if not m:
        raise InputError(f"{what} has an invalid value {_shown(text)}: expected a whole number")
    digits = m.group(1).lstrip("0") or "0"
    # Checked before int(): Python refuses to convert more than 4,300 digits anyway.
    if len(digits) > len(str(limit)) or int(digits) > limit:
        raise InputError(f"{what} value {_clip(m.group(1))} is too large")
    return int(digits)


def parse_scaled(text: str | None, unit: str | None, *, what: str, default: int = KiB) -> int:
    """Bytes for a libvirt scaled integer, rounded up to whole KiB.

    Exactly virParseScaledValue + virDomainParseMemory on a 64-bit host: the number
    as virStrToLong_ullp reads it, scaled by virScaleInteger (at most LLONG_MAX bytes),
    then rounded up to KiB and refused unless below 2**53 KiB. ``<memtune>`` limits
    end at the same bound. ``what`` names the element in messages, e.g. ``<memory>``.
    """
    if text is None or text == "":
        raise InputError(f"{what} has no value")
    value = parse_unsigned(text, what=what)
    try:
        scale = unit_scale(unit, default)
    except ValueError:
        raise InputError(f"{what} has an unknown unit {_shown(unit or '')}") from None
    if value > MAX_BYTES // scale:
        raise InputError(f"{what} value {value} {_clip(unit or 'KiB')} is too large")
    rounded = round_up(value * scale, KiB)
    if rounded > MAX_MEMORY_BYTES:
        raise InputError(f"{what} value {value} {_clip(unit or 'KiB')} is too large")
    return rounded


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


def _shown(text: str) -> str:
    """A value quoted for a message: clipped, one line, non-ASCII escaped so that a
    look-alike (the Kelvin sign for K) does not read as the real thing."""
    return ascii(_clip(text))


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
