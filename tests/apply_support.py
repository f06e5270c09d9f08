"""What the apply tests share, whether they drive test:///default or a real libvirtd."""

from __future__ import annotations

from lxml import etree

APPLIED_NS = "urn:memlock-guard:applied:1"

# Short under libvirt 9.0's rules: 4 GiB, one VFIO device and one NVMe disk give two
# containers (8 GiB pinned), while libvirt before 9.3 leaves NVMe out of its
# 1 x memory + 1 GiB. Fill in type, name and description.
SHORT_DOMAIN = """\
<domain type='{type}'>
  <name>{name}</name>
  <description>{description}</description>
  <memory unit='GiB'>4</memory>
  <vcpu>2</vcpu>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
  <features><acpi/></features>
  <devices>
    <disk type='nvme' device='disk'>
      <driver name='qemu' type='raw'/>
      <source type='pci' managed='yes' namespace='1'>
        <address domain='0x0000' bus='0x02' slot='0x00' function='0x0'/>
      </source>
      <target dev='vda' bus='virtio'/>
    </disk>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source><address domain='0x0000' bus='0x04' slot='0x00' function='0x0'/></source>
    </hostdev>
    <graphics type='vnc' passwd='s3cret'/>
  </devices>
</domain>
"""


def without_ours(xml: str) -> bytes:
    """Canonical XML without hard_limit/swap_hard_limit and our <metadata> child (the only
    things apply may change); blank text is dropped so re-indentation does not count."""
    root = etree.fromstring(xml.encode())
    memtune = root.find("memtune")
    if memtune is not None:
        for tag in ("hard_limit", "swap_hard_limit"):
            for el in memtune.findall(tag):
                memtune.remove(el)
        if len(memtune) == 0:
            root.remove(memtune)
    md = root.find("metadata")
    if md is not None:
        for child in md.findall(f"{{{APPLIED_NS}}}*"):
            md.remove(child)
        if len(md) == 0:
            root.remove(md)
    for el in root.iter():
        if el.text is not None and not el.text.strip():
            el.text = None
        if el.tail is not None and not el.tail.strip():
            el.tail = None
    return etree.tostring(root, method="c14n")
