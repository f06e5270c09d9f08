"""The domain XML written back in libvirt's own layout, so unchanged lines stay unchanged.

apply edits a definition in place and shows the change as a diff; that diff must be
exactly the lines that changed, and a redefinition must keep everything else as libvirt
wrote it. libvirt (virXMLFormat*) quotes attributes with ' and escapes < > & ' " in
text and attributes; the contents of <metadata> it prints with libxml2 (double quotes),
as lxml does.
"""

from __future__ import annotations

from lxml import etree

from .edit import depth


def serialize(root: etree._Element) -> str:
    """The tree as libvirt would print it, so unchanged lines stay byte-identical.

    libvirt (virXMLFormat*) quotes attributes with ' and escapes < > & ' " in text and
    attributes; the contents of <metadata> it prints with libxml2 (double quotes), as
    lxml does. The result is checked to mean exactly the tree (C14N); were it not,
    plain lxml output is returned, which libvirt reads the same.
    """
    out: list[str] = []
    _write(root, out, {})
    text = "".join(out) + "\n"
    try:
        same = (etree.tostring(etree.fromstring(text.encode()), method="c14n")
                == etree.tostring(root, method="c14n"))
    except etree.XMLSyntaxError:
        same = False
    return text if same else etree.tostring(root, encoding="unicode") + "\n"


def _foreign(el: etree._Element, inherited: dict[str | None, str]) -> str:
    """A <metadata> child as libvirt prints it: libxml2's serialisation, declaring the
    namespaces it declares itself and those it uses, not every one of the root's."""
    own = [p for p, uri in el.nsmap.items() if inherited.get(p) != uri and p is not None]
    copy = etree.fromstring(etree.tostring(el, with_tail=False))
    etree.cleanup_namespaces(copy, keep_ns_prefixes=own)
    return etree.tostring(copy, encoding="unicode", with_tail=False)


_ESCAPES = str.maketrans({"<": "&lt;", ">": "&gt;", "&": "&amp;", "'": "&apos;",
                          '"': "&quot;"})


def _esc(s: str) -> str:
    return s.translate(_ESCAPES)


def _qname(el: etree._Element, tag: str) -> str:
    if not tag.startswith("{"):
        return tag
    uri, local = tag[1:].split("}", 1)
    if uri == "http://www.w3.org/XML/1998/namespace":
        return f"xml:{local}"
    for prefix, value in el.nsmap.items():
        if value == uri:
            return f"{prefix}:{local}" if prefix else local
    return local


def _write(el: etree._Element, out: list[str], inherited: dict[str | None, str]) -> None:
    if not isinstance(el.tag, str):  # a comment or PI (xmlsafe drops them; be safe)
        out.append(etree.tostring(el, encoding="unicode", with_tail=False))
        return
    name = _qname(el, el.tag)
    parts = [f"<{name}"]
    for key, value in el.attrib.items():
        parts.append(f" {_qname(el, str(key))}='{_esc(str(value))}'")
    nsmap = dict(el.nsmap)
    for prefix, uri in nsmap.items():
        if inherited.get(prefix) != uri:
            parts.append(f" xmlns:{prefix}='{_esc(uri)}'" if prefix
                         else f" xmlns='{_esc(uri)}'")
    if len(el) == 0 and el.text is None:
        out.append("".join(parts) + "/>")
        return
    out.append("".join(parts) + ">")
    if el.text is not None:
        out.append(_esc(el.text))
    # Only the domain's own <metadata> (a child of the root) holds foreign XML.
    metadata = el.tag == "metadata" and depth(el) == 1
    for child in el:
        if metadata and isinstance(child.tag, str):
            out.append(_foreign(child, nsmap))
        else:
            _write(child, out, nsmap)
        if child.tail is not None:
            out.append(_esc(child.tail))
    out.append(f"</{name}>")
