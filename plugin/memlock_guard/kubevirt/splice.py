"""Put the sidecar's verdict into the domain's ``<metadata>``, touching no other byte.

virt-launcher marshals the domain with Go's encoding/xml (tab indents, ``<x></x>``,
double quotes) and defines the *string* the last sidecar prints
(pkg/virt-launcher/virtwrap/util/libvirt_helper.go SetDomainSpecStrWithHooks): a
re-serialised tree would change the devices' bytes for nothing. So the element is
spliced into the original text at byte offsets that expat reports
(``CurrentByteIndex``), after the hardened parser (support/xmlsafe) has accepted the
document.

Idempotent: an earlier verdict element (ours, by namespace) is removed with the
whitespace in front of it, and the new one is inserted in the same place, so a second
run on the output gives the output again (the hook runs several times per VMI start).
"""

from __future__ import annotations

import xml.parsers.expat

from ..support.defaults import KUBEVIRT_VERDICT_NS, KUBEVIRT_VERDICT_PREFIX

_WS = b" \t\r\n"


# Not xml.sax.saxutils.quoteattr: importing it pulls in urllib and http.client, 30 ms
# and megabytes the sidecar's 64M cannot spare.
_ATTR = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
                       "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"})


def verdict_element(attrs: dict[str, str]) -> bytes:
    """``<mgk:verdict xmlns:mgk=... a="..."/>``, attribute values escaped."""
    parts = [f'<{KUBEVIRT_VERDICT_PREFIX}:verdict xmlns:{KUBEVIRT_VERDICT_PREFIX}='
             f'"{KUBEVIRT_VERDICT_NS.translate(_ATTR)}"']
    parts += [f' {k}="{v.translate(_ATTR)}"' for k, v in attrs.items()]
    return ("".join(parts) + "/>").encode()


class _Spans:
    """Byte offsets of the tags that matter, from one expat pass."""

    def __init__(self) -> None:
        self.depth = 0
        # Offsets of the start tag and of the end event: the end tag ('</'), or just past
        # an empty-element tag.
        self.metadata: tuple[int, int] | None = None
        self.root_end: int | None = None
        self.ours: list[tuple[int, int]] = []  # (start tag, end tag) of our elements
        self._open: int | None = None
        self._md_start: int | None = None


def _scan(data: bytes) -> _Spans:
    spans = _Spans()
    parser = xml.parsers.expat.ParserCreate("UTF-8", " ")
    ours = f"{KUBEVIRT_VERDICT_NS} verdict"

    def start(name: str, _attrs: object) -> None:
        spans.depth += 1
        at = parser.CurrentByteIndex
        if spans.depth == 2 and name == "metadata" and spans.metadata is None:
            spans._md_start = at
        elif spans.depth == 3 and spans._md_start is not None and name == ours:
            spans._open = at

    def end(name: str) -> None:
        at = parser.CurrentByteIndex
        if spans.depth == 3 and spans._open is not None and name == ours:
            spans.ours.append((spans._open, at))
            spans._open = None
        elif spans.depth == 2 and name == "metadata" and spans._md_start is not None:
            if spans.metadata is None:
                spans.metadata = (spans._md_start, at)
            spans._md_start = None
        elif spans.depth == 1:
            spans.root_end = at
        spans.depth -= 1

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.Parse(data, True)
    return spans


def _tag_end(data: bytes, at: int) -> int:
    """The offset just past the tag that starts at ``at``: the first '>' outside quotes
    (an attribute value may hold '>', never a quote of its own kind)."""
    quote = 0
    for i in range(at, len(data)):
        c = data[i]
        if quote:
            if c == quote:
                quote = 0
        elif c in (0x22, 0x27):  # " '
            quote = c
        elif c == 0x3E:  # >
            return i + 1
    raise ValueError("unterminated tag")


def _empty(data: bytes, start: int) -> bool:
    """Whether the element starting at ``start`` is an empty-element tag (``<x/>``)."""
    return data[_tag_end(data, start) - 2] == 0x2F  # '/'


def _element_end(data: bytes, start: int, end: int) -> int:
    """Just past the element: expat reports an empty element's end event where its tag
    ends, and an element's end tag ('</x>') where that starts."""
    return _tag_end(data, start) if _empty(data, start) else _tag_end(data, end)


def _ws_before(data: bytes, at: int) -> int:
    i = at
    while i > 0 and data[i - 1] in _WS:
        i -= 1
    return i


def with_verdict(data: bytes, element: bytes) -> bytes:
    """``data`` with ``element`` as the last child of the domain's ``<metadata>`` (made
    when missing), any earlier verdict element removed; every other byte as it was.
    ``data`` must already have passed support/xmlsafe.parse."""
    spans = _scan(data)
    cuts: list[tuple[int, int, bytes]] = []  # (from, to, replacement), in original offsets
    for start, end in spans.ours:
        cuts.append((_ws_before(data, start), _element_end(data, start, end), b""))
    if spans.metadata is not None:
        md_start, md_end = spans.metadata
        if _empty(data, md_start):  # <metadata/>
            cuts.append((md_start, _tag_end(data, md_start),
                         b"<metadata>" + element + b"</metadata>"))
        else:
            ws_from = _ws_before(data, md_end)
            ws = data[ws_from:md_end]
            cuts.append((ws_from, ws_from, _indented(ws) + element))
    else:
        assert spans.root_end is not None
        ws_from = _ws_before(data, spans.root_end)
        ws = data[ws_from:spans.root_end]
        cuts.append((ws_from, ws_from,
                     _indented(ws) + b"<metadata>" + element + b"</metadata>"))
    out, pos = [], 0
    for start, stop, text in sorted(cuts, key=lambda c: (c[0], c[1])):
        out += [data[pos:start], text]
        pos = stop
    out.append(data[pos:])
    return b"".join(out)


def _indented(ws: bytes) -> bytes:
    """The whitespace before a new last child: the closing tag's, one level deeper."""
    if b"\n" not in ws:
        return ws
    return ws + (b"\t" if b"\t" in ws else b"  ")
