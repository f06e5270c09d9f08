"""The one hardened XML parser: every domain XML and policy file goes through here.

We run as root inside libvirtd's start path, so the parser must not resolve entities,
load DTDs, touch the network, or grow without bound. libvirt never emits a DOCTYPE, so
a document carrying one is refused outright rather than parsed "safely".

Limits, and why each is where it is:
- size: 16 MiB, libvirt's RPC cap on one string (VIR_NET_MESSAGE_STRING_MAX, 10.x);
  more is refused after reading at most that much, so a huge input costs no memory;
- encoding: UTF-8 only, forced on the parser whatever the XML declaration says.
  libvirt always writes UTF-8, and a UTF-16 or UTF-7 document would otherwise slip
  a DOCTYPE past the byte-level check below;
- elements: 100,000. The cost of a tree grows with its elements, not its bytes: 16 MiB
  of ``<a/>`` is 4 million nodes, over 500 MB and seconds of work. The largest real
  domains (4,096 vCPUs with per-vCPU pinning, thousands of devices) stay far below;
- depth: libxml2's own 256 levels (huge_tree off), as in libvirt's parser; also its
  10 MB cap on one text node or attribute value.
"""

from __future__ import annotations

import re
import time
from _thread import get_ident
from typing import IO

from lxml import etree

from .defaults import MAX_XML_BYTES
from .errors import InputError

MAX_ELEMENTS = 100_000
MAX_DEPTH = 256  # libxml2's limit without XML_PARSE_HUGE; informs the message only
_E = etree.ErrorTypes

_DOCTYPE = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_BLANK = re.compile(rb"[ \t\r\n]*")
_WHITESPACE = (b" ", b"\t", b"\r", b"\n")
# Byte-order marks of encodings other than UTF-8 (UTF-32 LE starts like UTF-16 LE).
_FOREIGN_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")


def read_limited(stream: IO[bytes], *, what: str, max_bytes: int = MAX_XML_BYTES) -> bytes:
    """Read to the end, at most ``max_bytes``; more is an error, so a huge input costs
    no memory. Loops: one read() on a raw pipe returns what has arrived so far, and a
    document cut there would be judged as if it were whole."""
    chunks: list[bytes] = []
    total = 0
    while total <= max_bytes:
        chunk = stream.read(max_bytes + 1 - total)
        if chunk is None:  # a non-blocking stream with nothing yet
            time.sleep(0.005)
            continue
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    if total > max_bytes:
        raise InputError(f"{what} is larger than {_mib(max_bytes)}")
    return b"".join(chunks)


def read_file(path: str, *, what: str, max_bytes: int = MAX_XML_BYTES) -> bytes:
    try:
        with open(path, "rb") as f:
            return read_limited(f, what=what, max_bytes=max_bytes)
    except OSError as e:
        raise InputError(f"cannot read {what} {path}: {e.strerror or e}") from None


def parse(data: bytes, *, what: str, max_bytes: int = MAX_XML_BYTES,
          max_elements: int = MAX_ELEMENTS) -> etree._Element:
    """Parse untrusted XML into an element; raise InputError naming ``what`` on any problem.

    The message is one line and never quotes the document beyond what libxml2 names
    (a tag or entity name), clipped, so nothing read through a hostile path leaks.
    """
    if len(data) > max_bytes:
        raise InputError(f"{what} is larger than {_mib(max_bytes)}")
    if not data or (data[:1] in _WHITESPACE and _BLANK.fullmatch(data)):
        raise InputError(f"{what} is empty")
    if data.startswith(_FOREIGN_BOMS) or b"\x00" in data[:4]:
        raise InputError(f"{what} is not UTF-8 (it looks like UTF-16 or UTF-32); "
                         "libvirt writes UTF-8")
    # Under forced UTF-8 a declaration is the bytes "<!" and a keyword: a document
    # without "<!" (most domain XML) needs neither the scan nor the check after parsing.
    declares = b"<!" in data
    if declares and _DOCTYPE.search(data):
        raise InputError(f"{what} carries a DOCTYPE or ENTITY declaration, which is refused")
    # Every element has a start tag, and every start tag is a '<' that is not '</'
    # (comments, CDATA and processing instructions only make this over-count). There
    # are no more '<' than bytes, so a document of at most max_elements bytes passes.
    if len(data) > max_elements:
        tags = data.count(b"<") - data.count(b"</")
        if tags > max_elements:
            raise InputError(f"{what} has more than {max_elements} elements")
    try:
        root = etree.fromstring(data, parser=_parser())
    except etree.XMLSyntaxError as e:
        raise InputError(f"{what} {_describe(e)}") from None
    except (ValueError, TypeError) as e:
        raise InputError(f"{what} cannot be parsed: {_clip(str(e))}") from None
    if root is None:
        raise InputError(f"{what} has no root element")
    if declares:  # defence in depth: the byte check above already refused these
        docinfo = root.getroottree().docinfo
        if (getattr(docinfo, "doctype", "") or docinfo.internalDTD is not None
                or docinfo.externalDTD is not None):
            raise InputError(f"{what} carries a DOCTYPE or ENTITY declaration, which is refused")
    return root


def _parser() -> etree.XMLParser:
    # One parser per thread: lxml parsers must not be shared between threads (a caller
    # may parse on a worker thread, e.g. under a deadline), and making one per document
    # costs as much as the checks above together. Keyed by thread id rather than held
    # in a threading.local: importing threading costs the hook 1 ms on every VM start.
    ident = get_ident()
    parser = _PARSERS.get(ident)
    if parser is None:
        if len(_PARSERS) >= 64:  # bounded: ids of ended threads pile up in a daemon
            _PARSERS.clear()
        parser = _PARSERS[ident] = etree.XMLParser(
            encoding="utf-8",  # overrides the declaration: see the module docstring
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            huge_tree=False,  # keeps libxml2's depth (256) and text-size (10 MB) limits
            remove_comments=True,
            remove_pis=True,
            collect_ids=False,
        )
    return parser


_PARSERS: dict[int, etree.XMLParser] = {}


# libxml2 errors that quote a tag, attribute, entity or prefix name from the document:
# said in our words instead, so a file that merely looks like XML (a symlink to a
# secret, a file given by mistake) never has a piece of it printed.
_NAMELESS = {
    _E.ERR_UNDECLARED_ENTITY: "uses an undefined entity",
    _E.WAR_UNDECLARED_ENTITY: "uses an undefined entity",
    _E.ERR_GT_REQUIRED: "has a start tag that is never closed",
    _E.ERR_TAG_NAME_MISMATCH: "has an end tag that does not match its start tag",
    _E.ERR_TAG_NOT_FINISHED: "ends before all its elements are closed",
    _E.ERR_ATTRIBUTE_WITHOUT_VALUE: "has an attribute without a value",
    _E.ERR_ATTRIBUTE_REDEFINED: "repeats an attribute in one element",
    _E.NS_ERR_XML_NAMESPACE: "declares an invalid namespace",
    _E.NS_ERR_UNDEFINED_NAMESPACE: "uses an undeclared namespace prefix",
    _E.NS_ERR_QNAME: "has an invalid qualified name",
}


def _describe(e: etree.XMLSyntaxError) -> str:
    """One line for a libxml2 error: what is wrong and where, naming nothing inside."""
    raw = str(e.msg if getattr(e, "msg", None) else e)
    msg = raw.split("\n", 1)[0].strip()
    msg = re.sub(r",\s*line \d+, column \d+\s*$", "", msg)
    msg = re.sub(r"'[^']*'", "'…'", msg)  # any other quoted piece of the document
    where = ""
    pos = getattr(e, "position", None)
    if pos and pos[0]:
        where = f" (line {pos[0]}, column {pos[1]})"
    if "Excessive depth" in msg:
        return f"nests elements more than {MAX_DEPTH} levels deep{where}"
    # libxml2 2.10+ says the first, 2.9 (Debian 12's python3-lxml) the second.
    if "Invalid bytes in character encoding" in msg or "Input is not proper UTF-8" in msg:
        return f"is not valid UTF-8{where}"
    if "Buffer size limit exceeded" in msg or "Resource limit exceeded" in msg:
        return f"has a tag, text or attribute value beyond the parser's size limit{where}"
    code = getattr(e, "code", None)
    if code in _NAMELESS:
        return f"is not well-formed XML: it {_NAMELESS[code]}{where}"
    return f"is not well-formed XML: {_clip(msg)}{where}"


def _clip(text: str, limit: int = 120) -> str:
    text = "".join(c if c.isprintable() else "?" for c in text[: limit + 1])
    return text if len(text) <= limit else text[:limit] + "…"


def _mib(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB"
