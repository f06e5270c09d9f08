"""libvirt scaled integers (virScaleInteger + virDomainParseMemory) and size helpers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from memlock_guard.domain import parse_domain
from memlock_guard.support.errors import InputError
from memlock_guard.support.units import human, parse_scaled, parse_size, pow2ceil, unit_scale

from .builders import GiB, KiB, MiB, domain, domain_xml

BINARY = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}


@pytest.mark.parametrize("unit", ["b", "B", "bytes", "BYTES", "Bytes"])
def test_bytes_units_scale_by_one(unit):
    assert unit_scale(unit) == 1


@pytest.mark.parametrize("letter", list(BINARY))
def test_single_letter_and_ib_units_are_binary(letter):
    power = BINARY[letter]
    for unit in (letter, letter.upper(), letter + "iB", letter.upper() + "IB", letter + "ib"):
        assert unit_scale(unit) == 1024**power, unit


@pytest.mark.parametrize("letter", list(BINARY))
def test_b_suffixed_units_are_decimal(letter):
    power = BINARY[letter]
    for unit in (letter + "B", letter.upper() + "B", letter + "b"):
        assert unit_scale(unit) == 1000**power, unit


def test_absent_or_empty_unit_means_kib():
    assert parse_scaled("4", None, what="<memory>") == 4 * KiB
    assert parse_scaled("4", "", what="<memory>") == 4 * KiB


def test_kb_is_1000_while_k_is_1024():
    # 1 MB = 10^6 bytes, which rounds up to 977 KiB; 1 M is exactly 1024 KiB.
    assert parse_scaled("1", "MB", what="x") == -(-10**6 // KiB) * KiB == 977 * KiB
    assert parse_scaled("1", "M", what="x") == MiB
    assert parse_scaled("1", "KB", what="x") == KiB  # 1000 bytes -> one whole KiB


@pytest.mark.parametrize(("value", "unit", "expected"), [
    ("1", "b", KiB),            # anything below a KiB is a whole KiB
    ("1024", "bytes", KiB),     # exact
    ("1025", "b", 2 * KiB),     # never rounded down
    ("2", "KB", 2 * KiB),       # 2000 bytes
    ("3", "kb", 3 * KiB),       # 3000 -> 3072
    ("5", "GB", -(-5 * 10**9 // KiB) * KiB),
])
def test_values_round_up_to_whole_kib(value, unit, expected):
    assert parse_scaled(value, unit, what="x") == expected


@given(st.integers(min_value=0, max_value=2**40), st.sampled_from(["b", "KB", "k", "MB", "M"]))
def test_rounding_is_the_smallest_kib_multiple_not_below_the_value(n, unit):
    exact = n * unit_scale(unit)
    got = parse_scaled(str(n), unit, what="x")
    assert got % KiB == 0
    assert exact <= got < exact + KiB


@pytest.mark.parametrize("junk", ["12abc", "1.5", "-1", "0x10", "one", "1 2", "٣"])
def test_junk_values_are_refused_naming_the_element(junk):
    with pytest.raises(InputError, match="<memory>"):
        parse_scaled(junk, "KiB", what="<memory>")


@pytest.mark.parametrize("unit", ["KiBi", "kibibytes", "Ki", "X", "MBi", "gigs", "iB"])
def test_junk_units_are_refused_naming_the_element(unit):
    with pytest.raises(InputError, match="<memory>") as e:
        parse_scaled("1", unit, what="<memory>")
    assert "unit" in str(e.value)


def test_values_beyond_64_bits_are_refused():
    with pytest.raises(InputError, match="too large"):
        parse_scaled("16", "EiB", what="<memory>")
    with pytest.raises(InputError, match="too large"):
        parse_scaled("9" * 40, None, what="<memory>")


def test_domain_memory_uses_the_scaled_integer_rules():
    assert domain(memory="4", unit="GiB").memory == 4 * GiB
    assert domain(memory="4", unit="gb").memory == -(-4 * 10**9 // KiB) * KiB
    assert domain(memory="1048576", unit="").memory == GiB  # no unit: KiB


@pytest.mark.parametrize(("memory", "unit"), [("lots", "KiB"), ("1", "parsecs")])
def test_domain_memory_junk_names_the_element(memory, unit):
    with pytest.raises(InputError, match="<memory>"):
        parse_domain(domain_xml(memory=memory, unit=unit))


def test_memtune_and_video_sizes_name_their_element():
    with pytest.raises(InputError, match="hard_limit"):
        parse_domain(domain_xml(extra="<memtune><hard_limit unit='Q'>1</hard_limit></memtune>"))
    with pytest.raises(InputError, match="vram"):
        parse_domain(domain_xml("<video><model type='vga' vram='16M'/></video>"))


@pytest.mark.parametrize(("n", "expected"), [
    (0, 0), (1, 1), (2, 2), (3, 4), (4096, 4096), (4097, 8192), (39936, 65536),
    (249344, 262144), (3 * MiB, 4 * MiB),
])
def test_pow2ceil(n, expected):
    assert pow2ceil(n) == expected


@given(st.integers(min_value=1, max_value=2**50))
def test_pow2ceil_is_the_smallest_power_of_two_not_below(n):
    p = pow2ceil(n)
    assert p & (p - 1) == 0
    assert p >= n > p // 2 or p == n == 1


@pytest.mark.parametrize(("text", "expected"), [
    ("64MiB", 64 * MiB), ("64M", 64 * MiB), ("1G", GiB), ("4096", 4096), ("2 MB", 2 * 10**6),
    ("0", 0),
])
def test_parse_size_for_command_line_sizes(text, expected):
    assert parse_size(text, what="--margin") == expected


@pytest.mark.parametrize("text", ["", "lots", "-1MiB", "1.5G", "64 furlongs"])
def test_parse_size_refuses_junk_naming_the_option(text):
    with pytest.raises(InputError, match="--margin"):
        parse_size(text, what="--margin")


def test_human():
    assert human(None) == "unlimited"
    assert human(GiB) == "1 GiB"
    assert human(1536 * MiB) == "1.50 GiB"
    assert human(512) == "512 B"
    assert human(-2 * MiB) == "-2 MiB"
