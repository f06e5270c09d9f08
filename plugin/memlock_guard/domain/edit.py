"""The only edits memlock-guard makes to a domain XML: hard_limit up, and its own metadata.

Both writers use these: ``apply``/``watch`` on a persistent definition, and the hook's
``migrate begin``/``restore begin`` answer. Each edit touches one element (inserted
where libvirt itself prints it, with libvirt's indentation) and nothing else.

``raise_hard_limit`` keeps ``swap_hard_limit`` at least as high as the new hard_limit.
libvirt 9.0 accepts a definition with swap_hard_limit below hard_limit, but at start it
writes the cgroup's memory limit and then the swap limit (virDomainCgroupSetupMemtune,
src/hypervisor/domain_cgroup.c): cgroup v1 refuses a memsw limit below the memory limit,
and under v2 it means nothing, so a restore or an incoming migration could fail after
we "fixed" it. The operator's swap allowance (swap_hard - hard) is kept.
"""

from __future__ import annotations

from lxml import etree

from ..support.units import KiB, parse_scaled, round_up

# libvirt's element order at the top of <domain> (virDomainDefFormatInternal): a new
# <metadata> goes after the first group, a new <memtune> after the second, which is
# where libvirt itself prints them.
BEFORE_METADATA = ("name", "uuid", "genid", "title", "description")
BEFORE_MEMTUNE = (*BEFORE_METADATA, "metadata", "maxMemory", "memory", "currentMemory",
                  "blkiotune")


def raise_hard_limit(root: etree._Element, target: int) -> bool:
    """Set ``<memtune><hard_limit unit='KiB'>`` to ``target`` bytes (rounded up to KiB)
    unless it is already at least that; True when the tree changed.

    A ``swap_hard_limit`` that would end up below the new hard_limit is raised by the
    same amount (see the module docstring).
    """
    target = round_up(target, KiB)
    memtune = root.find("memtune")
    if memtune is None:
        memtune = etree.Element("memtune")
        insert(root, index_after(root, BEFORE_MEMTUNE), memtune)
    hard = memtune.find("hard_limit")
    current = None
    if hard is not None:
        current = parse_scaled(hard.text, hard.get("unit"), what="<memtune><hard_limit>")
        if current >= target:
            return False
    else:
        hard = etree.Element("hard_limit")
        insert(memtune, 0, hard)  # libvirt prints hard, soft, swap_hard, min_guarantee
    hard.set("unit", "KiB")
    hard.text = str(target // KiB)
    swap = memtune.find("swap_hard_limit")
    if swap is not None:
        swap_bytes = parse_scaled(swap.text, swap.get("unit"), what="<swap_hard_limit>")
        if swap_bytes < target:
            allowance = swap_bytes - current if current and swap_bytes >= current else 0
            swap.set("unit", "KiB")
            swap.text = str((target + allowance) // KiB)
    return True


def set_metadata(root: etree._Element, element: etree._Element) -> None:
    """Put ``element`` in ``<metadata>``, replacing the child of its namespace if any
    (libvirt keeps one child per namespace)."""
    md = root.find("metadata")
    if md is None:
        md = etree.Element("metadata")
        insert(root, index_after(root, BEFORE_METADATA), md)
    old = metadata_child(root, etree.QName(element).namespace or "")
    if old is not None:
        element.tail = old.tail
        md.replace(old, element)
    else:
        insert(md, len(md), element)


def metadata_child(root: etree._Element, namespace: str) -> etree._Element | None:
    """The ``<metadata>`` child in ``namespace``, or None."""
    md = root.find("metadata")
    if md is None:
        return None
    for child in md:
        if isinstance(child.tag, str) and child.tag.startswith("{" + namespace + "}"):
            return child
    return None


def index_after(parent: etree._Element, names: tuple[str, ...]) -> int:
    """Position just after the last child named in ``names`` (0 when none is there)."""
    index = 0
    for i, child in enumerate(parent):
        if isinstance(child.tag, str) and child.tag in names:
            index = i + 1
    return index


def depth(el: etree._Element) -> int:
    return sum(1 for _ in el.iterancestors())


def insert(parent: etree._Element, index: int, child: etree._Element) -> None:
    """Insert ``child`` keeping libvirt's layout: one element per line, 2-space indents.

    Only the whitespace next to the new element changes; a document that is not
    indented (root without leading whitespace) stays unindented.
    """
    root = parent.getroottree().getroot()
    pretty = bool(root.text) and not (root.text or "").strip()
    inner = "\n" + "  " * (depth(parent) + 1) if pretty else None
    outer = "\n" + "  " * depth(parent) if pretty else None
    if len(parent) == 0:
        parent.text = inner
        child.tail = outer
        parent.append(child)
    elif index == 0:
        child.tail = parent.text if pretty else None
        parent.text = inner
        parent.insert(0, child)
    else:
        prev = parent[index - 1]
        child.tail = prev.tail
        prev.tail = inner
        parent.insert(index, child)
