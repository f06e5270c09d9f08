"""Small builders for domain XML and ledgers, shared by the unit tests.

The tests state rules, so they build the smallest domain that exercises one rule and
compare it with the same domain without that rule's trigger (a differential check):
an item another estimator adds, or a size the real-QEMU measurements refine, then
cancels out instead of breaking an unrelated test.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from memlock_guard.accounting.engine import build_ledger
from memlock_guard.accounting.ledger import Kind, Ledger, LedgerItem
from memlock_guard.accounting.report import Report, Settings, assess
from memlock_guard.domain import Domain, parse_domain
from memlock_guard.host.facts import HostFacts

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
PAGE = 4096

HOSTDEV = ("<hostdev mode='subsystem' type='pci' managed='yes'><source>"
           "<address domain='0x0000' bus='0x{bus:02x}' slot='0x00' function='0x{fn:x}'/>"
           "</source></hostdev>")
NVME = ("<disk type='nvme' device='disk'><driver name='qemu' type='raw'/>"
        "<source type='pci' managed='yes' namespace='1'>"
        "<address domain='0x0000' bus='0x{bus:02x}' slot='0x00' function='0x0'/></source>"
        "<target dev='vd{letter}' bus='virtio'/></disk>")
VDPA_NET = ("<interface type='vdpa'><source dev='/dev/vhost-vdpa-{n}'/>"
            "<mac address='52:54:00:00:01:{n:02x}'/></interface>")
VF_NET = ("<interface type='hostdev' managed='yes'><mac address='52:54:00:00:02:{n:02x}'/>"
          "<source><address type='pci' domain='0x0000' bus='0x3b' slot='0x02'"
          " function='0x{n:x}'/></source></interface>")


def hostdevs(n: int, first_bus: int = 1) -> str:
    return "".join(HOSTDEV.format(bus=first_bus + i, fn=0) for i in range(n))


def nvme_disks(n: int) -> str:
    return "".join(NVME.format(bus=0x40 + i, letter="bcdefgh"[i]) for i in range(n))


def vdpa_nets(n: int) -> str:
    return "".join(VDPA_NET.format(n=i) for i in range(n))


def domain_xml(devices: str = "", *, memory: str = "1048576", unit: str = "KiB",
               arch: str = "x86_64", machine: str = "pc-q35-7.2", virt: str = "kvm",
               vcpus: int = 1, os_extra: str = "", os_attrs: str = "", extra: str = "",
               name: str = "t") -> bytes:
    """A minimal domain: 1 GiB, 1 vCPU, q35, SeaBIOS, nothing but ``devices``."""
    return (f"<domain type='{virt}'><name>{name}</name>"
            f"<memory unit='{unit}'>{memory}</memory><vcpu>{vcpus}</vcpu>"
            f"<os{os_attrs}><type arch='{arch}' machine='{machine}'>hvm</type>{os_extra}</os>"
            f"{extra}<devices>{devices}</devices></domain>").encode()


def domain(devices: str = "", **kw: Any) -> Domain:
    return parse_domain(domain_xml(devices, **kw))


def ledger(host: HostFacts, devices: str = "", **kw: Any) -> Ledger:
    return build_ledger(domain(devices, **kw), host)


def report(host: HostFacts, xml: bytes, **settings: Any) -> Report:
    return assess(parse_domain(xml), host, Settings(**settings))


def of_kind(led: Ledger, kind: Kind) -> list[LedgerItem]:
    return [i for i in led.items if i.kind is kind]


def sizes(items: Iterable[LedgerItem]) -> Counter[int]:
    return Counter(i.bytes for i in items)


def total(items: Iterable[LedgerItem]) -> int:
    return sum(i.bytes for i in items)


def added(base: Ledger, more: Ledger) -> Counter[int]:
    """The item sizes ``more`` has beyond ``base`` (a multiset difference)."""
    return sizes(more.items) - sizes(base.items)


def pow2ceil(n: int) -> int:
    return 1 << (n - 1).bit_length()


def round_up(n: int, step: int) -> int:
    return -(-n // step) * step
