"""What the running QEMUs of a uid already pin, for check (iommufd user accounting).

The rule is accounting/pins.py; the hook gathers the running VMs from libvirt's status
files and /proc (hook/pins.py). check asks libvirt instead: the live XML of every
running domain, once per run and only when a domain under user accounting is judged.
The live XML carries no PID, so each running VM counts by its ledger (what it can pin
at most), an upper bound of what the hook, which reads VmPin, counts.
"""

from __future__ import annotations

from typing import Any

from ..accounting.engine import build_ledger
from ..accounting.pins import RunningVM, needs_ledger, running_vm, uid_pinned
from ..accounting.report import Report
from ..domain import parse_domain
from ..host import sources
from ..support.errors import InputError
from . import client as lc
from .reconcile import Judge


class LivePins:
    """The running domains of one connection, read on first use."""

    def __init__(self, conn: Any, judge: Judge) -> None:
        self._conn = conn
        self._judge = judge
        self._running: list[RunningVM] | None = None

    def running(self) -> list[RunningVM]:
        if self._running is None:
            self._running = []
            for dom in lc.all_domains(self._conn):
                if not lc.is_active(dom):
                    continue
                try:
                    domain = parse_domain(lc.live_xml(dom).encode())
                except (InputError, lc.DomainGone):
                    continue  # gone meanwhile, or nothing we can read: it pins nothing known
                host = self._judge.host_for(domain)
                ledger = build_ledger(domain, host, self._judge.pm) \
                    if needs_ledger(domain) else None
                uid = sources.resolve_user(domain.dac_user)
                self._running.append(running_vm(domain, ledger, uid=uid,
                                                libvirt_version=host.libvirt_version))
        return self._running

    def judge(self, xml: str, report: Report) -> Report:
        """``report`` (judged from ``xml``) again with what the other QEMUs of its uid
        pin, when it is under iommufd user accounting; else ``report`` as it is."""
        backend = report.ledger.backend
        if backend is None or not backend.user_accounting:
            return report
        d = report.domain
        uid = sources.resolve_user(d.dac_user) if d.dac_static else None
        shared = uid_pinned(d, uid, self.running())
        if not shared:
            return report
        again, _policy = self._judge(xml, uid_pinned=shared)
        return again
