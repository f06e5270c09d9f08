"""The one hardened XML parser: every domain XML and policy file goes through here.

We run as root inside libvirtd's start path, so the parser must not resolve entities,
load DTDs, touch the network, or grow without bound. libvirt never emits a DOCTYPE, so
a document carrying one is refused outright rather than parsed "safely".
"""

from __future__ import annotations

import re
from typing import IO

from lxml import etree

from .errors import InputError

# libvirt's RPC layer caps a string at 16 MiB (VIR_NET_MESSAGE_STRING_MAX, 10.x);
# no real domain XML comes near it.
MAX_XML_BYTES = 16 * 1024 * 1024

_DOCTYPE = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)

_PARSER = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    dtd_validation=False,
    huge_tree=False,  # keeps libxml2's depth (256) and text-size limits
    remove_comments=True,
    remove_pis=True,
    collect_ids=False,
)


def read_limited(stream: IO[bytes], *, what: str, max_bytes: int = MAX_XML_BYTES) -> bytes:
    """Read at most ``max_bytes``; more is an error, so a huge input costs no memory."""
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InputError(f"{what} is larger than {max_bytes // (1024 * 1024)} MiB")
    return data


def read_file(path: str, *, what: str, max_bytes: int = MAX_XML_BYTES) -> bytes:
    try:
        with open(path, "rb") as f:
            return read_limited(f, what=what, max_bytes=max_bytes)
    except OSError as e:
        raise InputError(f"cannot read {what} {path}: {e.strerror or e}") from None


def parse(data: bytes, *, what: str, max_bytes: int = MAX_XML_BYTES) -> etree._Element:
    """Parse untrusted XML into an element; raise InputError naming ``what`` on any problem."""
    if len(data) > max_bytes:
        raise InputError(f"{what} is larger than {max_bytes // (1024 * 1024)} MiB")
    if not data.strip():
        raise InputError(f"{what} is empty")
    if _DOCTYPE.search(data):
        raise InputError(f"{what} carries a DOCTYPE or ENTITY declaration, which is refused")
    try:
        root = etree.fromstring(data, parser=_PARSER)
    except etree.XMLSyntaxError as e:
        msg = str(e.msg if hasattr(e, "msg") and e.msg else e).strip().splitlines()[0]
        line = getattr(e, "lineno", None)
        where = f" (line {line})" if line else ""
        raise InputError(f"{what} is not well-formed XML: {msg}{where}") from None
    except (ValueError, TypeError) as e:
        raise InputError(f"{what} cannot be parsed: {e}") from None
    if root is None:
        raise InputError(f"{what} has no root element")
    return root
