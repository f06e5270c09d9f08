"""Scaled integers against an independent model of libvirt's parsing.

The reference below is written from libvirt's C (src/util/virstring.c virStrToLong_ullp,
src/util/virutil.c virScaleInteger, src/conf/domain_conf.c virDomainParseMemory, 9.0
through 12.x), step by step, sharing no code with memlock_guard.support.units. Where the C reads
as ambiguous, the behaviour was checked with ``virsh define`` on libvirt 9.0.
"""

from __future__ import annotations

from hypothesis import given, note
from hypothesis import strategies as st
from memlock_guard.domain import parse_domain
from memlock_guard.support.errors import InputError
from memlock_guard.support.units import parse_scaled

from .strategies import SETTINGS

LLONG_MAX = 2**63 - 1
ULLONG_MAX = 2**64 - 1
C_SPACE = " \t\n\v\f\r"  # isspace() in the C locale


def _ascii_lower(s: str) -> str:
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in s)


def ref_strtoull_p(s: str) -> int | None:
    """virStrToLong_ullp(s, NULL, 10, &v): None where libvirt returns -1."""
    i = 0
    while i < len(s) and s[i] in C_SPACE:
        i += 1
    negative = False
    if i < len(s) and s[i] in "+-":
        negative = s[i] == "-"
        i += 1
    j = i
    while j < len(s) and s[j] in "0123456789":
        j += 1
    if j == i:  # no digits: p == s
        return None
    if j != len(s):  # end_ptr NULL: the whole string must be used
        return None
    if negative:  # memchr(s, '-', p - s)
        return None
    digits = s[i:j].lstrip("0") or "0"
    if len(digits) > 20 or int(digits) > ULLONG_MAX:  # ERANGE
        return None
    return int(digits)


def ref_scale(value: int, suffix: str | None, scale: int, limit: int) -> int | None:
    """virScaleInteger(&value, suffix, scale, limit)."""
    if not suffix:
        pass
    elif _ascii_lower(suffix) in ("b", "byte", "bytes"):
        scale = 1
    else:
        if len(suffix) == 1 or _ascii_lower(suffix[1:]) == "ib":
            base = 1024
        elif _ascii_lower(suffix[1]) == "b" and len(suffix) == 2:
            base = 1000
        else:
            return None
        power = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}.get(_ascii_lower(suffix[0]))
        if power is None:
            return None
        scale = base**power
    if value and value > limit // scale:
        return None
    return value * scale


def ref_parse_memory(text: str | None, unit: str | None) -> int | None:
    """virDomainParseMemory(..., capped) on a 64-bit host, in bytes (KiB x 1024)."""
    if text is None or text == "":  # virXPathString gives NULL for ""
        return None
    value = ref_strtoull_p(text)
    if value is None:
        return None
    scaled = ref_scale(value, unit, 1024, LLONG_MAX)
    if scaled is None:
        return None
    kib = -(-scaled // 1024)
    if kib >= -(-LLONG_MAX // 1024):
        return None
    return kib * 1024


UNITS = ["", "b", "byte", "bytes", "k", "K", "KiB", "kib", "KB", "kB", "m", "MiB", "MB", "g",
         "GiB", "GB", "gb", "t", "TiB", "TB", "p", "PiB", "PB", "e", "EiB", "EB",
         "Ki", "KiBB", "kb2", " KiB", "KiB ", "\u212aiB", "x", "iB", "B", "BYTES"]
NUMBER_TEXT = st.one_of(
    st.integers(0, 2**66).map(str),
    st.builds(lambda ws, sign, n, tail: f"{ws}{sign}{n}{tail}",
              st.text(alphabet=" \t\n\r\v\f", max_size=2), st.sampled_from(["", "+", "-", "++"]),
              st.integers(0, 2**64).map(str), st.sampled_from(["", "", " ", "x", ".5", "\n"])),
    st.text(alphabet="0123456789+- x.e\u0661", max_size=25),
    st.just("0" * 5000 + "1"),
)


@SETTINGS
@given(NUMBER_TEXT, st.one_of(st.none(), st.sampled_from(UNITS), st.text(max_size=4)))
def test_parse_scaled_agrees_with_libvirt(text: str, unit: str | None) -> None:
    expected = ref_parse_memory(text, unit)
    note(f"text={text!r} unit={unit!r} libvirt={expected}")
    try:
        got: int | None = parse_scaled(text, unit, what="<memory>")
    except InputError:
        got = None
    assert got == expected


@SETTINGS
@given(st.integers(1, LLONG_MAX), st.sampled_from([u for u in UNITS[:26] if u]))
def test_sizes_round_trip_through_any_unit(n: int, unit: str) -> None:
    """Write n bytes in a unit (rounded down to it), read it back, then re-read the KiB
    figure libvirt would store: libvirt's rounding, and nothing else, is applied."""
    scale = ref_scale(1, unit, 1024, LLONG_MAX) or 1
    value = n // scale
    expected = ref_parse_memory(str(value), unit)
    try:
        got: int | None = parse_scaled(str(value), unit, what="x")
    except InputError:
        got = None
    assert got == expected
    if got is not None:
        assert got % 1024 == 0 and got >= value * scale and got - value * scale < 1024
        assert parse_scaled(str(got // 1024), None, what="x") == got
        assert parse_scaled(str(got), "b", what="x") == got


@SETTINGS
# XML 1.0 cannot carry NUL, \v or \f at all, and turns \r into \n.
@given(NUMBER_TEXT.filter(lambda t: not set(t) & set("\x00\v\f\r")),
       st.sampled_from([u for u in UNITS if u.isprintable()]))
def test_memory_element_is_read_with_the_same_rules(text: str, unit: str) -> None:
    """Through the XML: the element's string-value and its unit attribute."""
    esc = text.replace("&", "&amp;").replace("<", "&lt;")
    u = f" unit='{unit}'" if unit else ""
    xml = (f"<domain type='kvm'><name>u</name><memory{u}>{esc}</memory>"
           "<os><type arch='x86_64'>hvm</type></os></domain>").encode()
    # XML attribute-value normalisation turns \t and \n in the unit into spaces.
    expected = ref_parse_memory(text, unit.replace("\t", " ").replace("\n", " "))
    note(f"libvirt={expected}")
    try:
        got: int | None = parse_domain(xml).memory
    except InputError:
        got = None
    assert got == (expected or None)  # zero memory is refused as well
