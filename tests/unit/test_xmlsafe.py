"""The hardened parser: no entities, no DTDs, no network, a size cap, one-line errors."""

from __future__ import annotations

import io
from typing import ClassVar

import pytest
from memlock_guard.domain import parse_domain
from memlock_guard.support import xmlsafe
from memlock_guard.support.errors import InputError

from .builders import GiB, domain_xml


def _refused(data: bytes, match: str | None = None) -> str:
    with pytest.raises(InputError, match=match) as e:
        xmlsafe.parse(data, what="domain XML")
    msg = str(e.value)
    assert "\n" not in msg, "an error is one line"
    assert "domain XML" in msg, "the message names the input"
    return msg


def test_a_plain_domain_parses():
    root = xmlsafe.parse(domain_xml(), what="domain XML")
    assert root.tag == "domain"


@pytest.mark.parametrize("doc", [
    b"<!DOCTYPE domain><domain/>",
    b"<?xml version='1.0'?>\n<!doctype domain [<!ELEMENT domain ANY>]><domain/>",
    b"<!DOCTYPE d [<!ENTITY a 'aaaa'><!ENTITY b '&a;&a;&a;&a;'>]><domain>&b;</domain>",
    b"<!DOCTYPE d [<!ENTITY x SYSTEM 'file:///etc/passwd'>]><domain><name>&x;</name></domain>",
    b"<!DOCTYPE d SYSTEM 'http://127.0.0.1:1/evil.dtd'><domain/>",
])
def test_doctype_and_entity_declarations_are_refused(doc):
    msg = _refused(doc, match="DOCTYPE")
    assert "root:" not in msg  # the external entity was never read


def test_undeclared_entity_is_an_error_not_a_lookup():
    _refused(b"<domain><name>&xxe;</name></domain>")


@pytest.mark.parametrize("doc", [b"<domain>", b"<domain><name>a</domain>", b"not xml at all",
                                 b"<domain></domain><domain/>"])
def test_malformed_xml_is_one_line(doc):
    _refused(doc, match="XML")


@pytest.mark.parametrize("doc", [b"", b"   \n\t "])
def test_empty_input_is_refused(doc):
    _refused(doc, match="empty")


def test_size_cap_is_enforced_before_parsing():
    doc = b"<domain>" + b" " * 200 + b"</domain>"
    with pytest.raises(InputError, match="larger than"):
        xmlsafe.parse(doc, what="domain XML", max_bytes=100)
    assert xmlsafe.parse(doc, what="domain XML", max_bytes=len(doc)).tag == "domain"


def test_read_limited_never_reads_more_than_the_cap_plus_one():
    class Counting(io.BytesIO):
        asked: ClassVar[list[int]] = []

        def read(self, n: int | None = -1) -> bytes:
            self.asked.append(-1 if n is None else n)
            return super().read(n)

    stream = Counting(b"x" * 10_000)
    with pytest.raises(InputError, match="larger than"):
        xmlsafe.read_limited(stream, what="stdin", max_bytes=1000)
    assert stream.asked and all(0 < n <= 1001 for n in stream.asked)
    assert xmlsafe.read_limited(io.BytesIO(b"x" * 1000), what="stdin", max_bytes=1000)


def test_read_file_reports_a_missing_file_as_input_error(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        xmlsafe.read_file(str(tmp_path / "nope.xml"), what="domain XML")


def test_comments_and_processing_instructions_are_dropped():
    doc = domain_xml().replace(b"<devices>", b"<!-- hello --><?pi x?><devices>")
    root = xmlsafe.parse(doc, what="domain XML")
    assert all(isinstance(el.tag, str) for el in root.iter())


def test_unknown_elements_and_attributes_are_ignored():
    doc = domain_xml("<frobnicator speed='11'><x/></frobnicator>",
                     extra="<vendor:thing xmlns:vendor='urn:x'/><unknown a='b'/>")
    d = parse_domain(doc)
    assert d.memory == GiB


def test_a_root_other_than_domain_is_refused():
    with pytest.raises(InputError, match="not <domain>"):
        parse_domain(b"<network><name>default</name></network>")


def test_a_failed_parse_leaves_the_parser_usable():
    for bad in (b"<domain>", b"<!DOCTYPE x><domain/>", b"\xff\xfe<\x00"):
        with pytest.raises(InputError):
            xmlsafe.parse(bad, what="domain XML")
        assert parse_domain(domain_xml(name="after")).name == "after"


def test_parsing_on_many_threads_at_once():
    from concurrent.futures import ThreadPoolExecutor

    def work(i: int) -> str:
        for _ in range(50):
            if i % 3 == 0:
                with pytest.raises(InputError):
                    xmlsafe.parse(b"<domain><x></domain>", what="domain XML")
            name = parse_domain(domain_xml(name=f"vm{i}")).name
        return name

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(work, range(16))) == [f"vm{i}" for i in range(16)]
