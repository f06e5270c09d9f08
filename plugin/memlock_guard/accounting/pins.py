"""iommufd user accounting: what the other running QEMUs of one uid already pin.

Under user accounting the kernel charges every iommufd pin to the uid's
``user_struct`` and checks the running total against the *pinning* process's own
RLIMIT_MEMLOCK (drivers/iommu/iommufd/pages.c, ``incr_user_locked_vm``). So a VM that
starts under user accounting fits only if its own requirement plus what the other
QEMUs of its uid have charged to the user stays under its limit. This module is the
rule for that sum, pure; the hook (hook/pins.py: /run/libvirt/qemu status files and
/proc/PID/status) and check (libvirtd/pins.py: live XMLs through libvirt) gather the
running VMs.

One running VM counts:
- nothing, unless its own XML says its iommufd pins are user-charged (backend.py: the
  descriptor came from outside);
- where /proc/PID/status is readable: VmPin, every page it has pinned (iommufd counts
  its pins there in every mode, pages.c ``do_update_pinned``). If VmLck is at least
  VmPin, the descriptor's opener chose process accounting (those pins are in VmLck
  too, pages.c ``update_mm_locked_vm``), and it counts nothing; that test is skipped
  when ``<locked/>`` or NVMe disks (type1, VmLck only) put other pages in VmLck. VmPin
  also holds vhost-vDPA and RDMA pins: an over-count, never an under-count;
- otherwise its ledger: one container's strict peak for each iommufd IOAS, what it
  can pin at most.
Which uid: a static DAC label names it; without one QEMU runs as qemu.conf's user,
which every running VM with a generated (dynamic) label shows as ``+UID:+GID``. When
a uid cannot be told, the VM counts (never under-count).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from ..domain import Domain
from .backend import backend_of, ioas_count
from .ledger import Ledger


class RunningVM(NamedTuple):
    name: str
    uuid: str | None
    uid: int | None  # the uid its QEMU runs as; None when unknown
    default_user: bool  # qemu.conf's user (a generated DAC label)
    user_charged: bool  # its iommufd pins are charged to the user
    estimate: int  # what its ledger says it can pin through iommufd, bytes
    other_locked: bool  # <locked/> or NVMe disks: VmLck holds more than iommufd pins
    vm_pin: int | None = None  # /proc/PID/status, bytes; None when unreadable
    vm_lck: int | None = None


def running_vm(domain: Domain, ledger: Ledger | None, *, uid: int | None,
               libvirt_version: tuple[int, int, int] | None = None,
               vm_pin: int | None = None, vm_lck: int | None = None) -> RunningVM:
    """A running VM as the sum sees it, from its live XML and the ledger of that XML
    (needed only when its pins are user-charged: ``needs_ledger``)."""
    user = backend_of(domain).user_accounting
    estimate = 0
    if user:
        assert ledger is not None, "a user-charged VM needs its ledger"
        estimate = ledger.one_container()[0] * ioas_count(domain, libvirt_version)
    default = not domain.dac_static
    return RunningVM(domain.name, domain.uuid, uid, default, user, estimate,
                     domain.memory_backing.locked or bool(domain.nvme_disks),
                     vm_pin, vm_lck)


def needs_ledger(domain: Domain) -> bool:
    return backend_of(domain).user_accounting


def charge(vm: RunningVM) -> int:
    """What ``vm`` has charged to its user, by the rules in the module docstring."""
    if not vm.user_charged:
        return 0
    if vm.vm_pin is None:
        return vm.estimate
    if vm.vm_lck is not None and not vm.other_locked and vm.vm_lck >= vm.vm_pin > 0:
        return 0  # process accounting after all: the pins are in VmLck as well
    return vm.vm_pin


def uid_pinned(candidate: Domain, candidate_uid: int | None,
               running: Iterable[RunningVM]) -> int:
    """Bytes the running VMs of ``candidate``'s uid have charged to the user.

    ``candidate_uid``: the uid of a static DAC label (None: no static label, so
    qemu.conf's user, or a name that could not be resolved).
    """
    def itself(r: RunningVM) -> bool:  # check judges running VMs too
        if candidate.uuid is not None:
            return r.uuid == candidate.uuid
        return r.name == candidate.name

    vms = [r for r in running if not itself(r)]
    static = candidate.dac_static
    default_uids = {r.uid for r in vms if r.default_user and r.uid is not None}

    def same_user(r: RunningVM) -> bool:
        if r.uid is None:
            return True
        if static:
            return candidate_uid is None or r.uid == candidate_uid
        return r.default_user or not default_uids or r.uid in default_uids

    return sum(charge(r) for r in vms if same_user(r))

