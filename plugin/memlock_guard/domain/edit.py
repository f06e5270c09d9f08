"""The only edits memlock-guard makes to a domain XML: hard_limit up, and its own metadata.

Both writers use these: ``apply``/``watch`` on a persistent definition, and the hook's
``migrate begin``/``restore begin`` answer. Each edit touches one element (inserted
where libvirt itself prints it, with libvirt's indentation) and nothing else.
``attach-device`` raises a limit through libvirt's memtune API instead, with the same
numbers (``raised_memtune``). The device edits at the end (``add_device``,
``remove_device``) change only a copy that is judged, never a definition that is
written back: libvirt itself adds and removes the device.

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
from .hostdev import pci_address

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
    memtune = root.find("memtune")
    hard = memtune.find("hard_limit") if memtune is not None else None
    swap = memtune.find("swap_hard_limit") if memtune is not None else None
    current = None if hard is None else parse_scaled(hard.text, hard.get("unit"),
                                                    what="<memtune><hard_limit>")
    swap_bytes = None if swap is None else parse_scaled(swap.text, swap.get("unit"),
                                                        what="<swap_hard_limit>")
    new = raised_memtune(current, swap_bytes, target)
    if new is None:
        return False
    if memtune is None:
        memtune = etree.Element("memtune")
        insert(root, index_after(root, BEFORE_MEMTUNE), memtune)
    if hard is None:
        hard = etree.Element("hard_limit")
        insert(memtune, 0, hard)  # libvirt prints hard, soft, swap_hard, min_guarantee
    hard.set("unit", "KiB")
    hard.text = str(new[0] // KiB)
    if swap is not None and new[1] is not None:
        swap.set("unit", "KiB")
        swap.text = str(new[1] // KiB)
    return True


def raised_memtune(hard: int | None, swap: int | None,
                   target: int) -> tuple[int, int | None] | None:
    """The memtune that raising ``hard`` to ``target`` gives: (hard_limit, the new
    swap_hard_limit or None when it stays), in bytes, whole KiB; None when ``hard`` is
    already at least ``target`` (never lower).

    A ``swap`` below the new hard_limit is raised by as much, keeping the operator's
    swap allowance (swap - hard); see the module docstring.
    """
    target = round_up(target, KiB)
    if hard is not None and hard >= target:
        return None
    new_swap = None
    if swap is not None and swap < target:
        allowance = swap - hard if hard and swap >= hard else 0
        new_swap = target + allowance
    return target, new_swap


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


# -- a device added to or taken out of a copy, to judge it -----------------------------

# The elements libvirt accepts as a device for attach/detach (virDomainDeviceDefParse,
# src/conf/domain_conf.c, libvirt 9.0).
DEVICE_TAGS = frozenset((
    "disk", "lease", "filesystem", "interface", "input", "sound", "video", "hostdev",
    "watchdog", "controller", "graphics", "hub", "redirdev", "smartcard", "serial",
    "parallel", "console", "channel", "memballoon", "nvram", "rng", "shmem", "tpm",
    "panic", "memory", "iommu", "vsock", "audio", "crypto",
))


def add_device(root: etree._Element, device: etree._Element) -> None:
    """Append a copy of ``device`` to the domain's ``<devices>``.

    A memory device also grows the memory total, as libvirt's virDomainMemoryInsert
    does: with NUMA cells the total is computed from them and the devices, so the
    element is enough; without, ``<memory>`` is the total and grows by the device's size.
    """
    devices = root.find("devices")
    if devices is None:
        devices = etree.SubElement(root, "devices")
    copy = etree.fromstring(etree.tostring(device, with_tail=False))
    devices.append(copy)
    if copy.tag == "memory":
        _grow_memory(root, copy, +1)


def remove_device(root: etree._Element, device: etree._Element) -> bool:
    """Take the device ``device`` names out of the domain; False when none matches.

    Matched as libvirt finds the device to detach, by what identifies it: a hostdev by
    its source address (or mdev uuid), an interface by MAC, a disk by target dev, a
    memory device by model and size, any device by ``<alias name>``.
    """
    key = _identity(device)
    if key is None:
        return False
    for devices in root.findall("devices"):
        for el in devices:
            if isinstance(el.tag, str) and el.tag == device.tag and _identity(el) == key:
                if el.tag == "memory":
                    _grow_memory(root, el, -1)
                devices.remove(el)
                return True
    return False


def _identity(el: etree._Element) -> tuple[str, ...] | None:
    alias = el.find("alias")
    if alias is not None and alias.get("name") and el.tag not in ("hostdev", "interface",
                                                                   "disk", "memory"):
        return ("alias", alias.get("name") or "")
    if el.tag == "hostdev":
        addr = el.find("source/address")
        if addr is None:
            return None
        if addr.get("uuid"):
            return ("uuid", (addr.get("uuid") or "").lower())
        pci = pci_address(addr)
        return None if pci is None else ("pci", pci)
    if el.tag == "interface":
        mac = el.find("mac")
        return None if mac is None else ("mac", (mac.get("address") or "").lower())
    if el.tag == "disk":
        target = el.find("target")
        return None if target is None else ("dev", target.get("dev") or "")
    if el.tag == "memory":
        size = el.find("target/size")
        if size is None:
            return None
        return ("memory", el.get("model") or "",
                str(parse_scaled(size.text, size.get("unit"), what="<memory><target><size>")))
    return None


def _grow_memory(root: etree._Element, device: etree._Element, sign: int) -> None:
    cells = root.findall("cpu/numa/cell")
    memory = root.find("memory")
    size = device.find("target/size")
    if cells or memory is None or size is None:
        return
    total = parse_scaled(memory.text, memory.get("unit"), what="<memory>")
    delta = parse_scaled(size.text, size.get("unit"), what="<memory><target><size>")
    memory.set("unit", "KiB")
    memory.text = str(max(0, total + sign * delta) // KiB)
