"""libvirt's test:///default driver for API-level tests: a real libvirt, in this process.

All connections to test:///default in one process share one in-memory driver while any of
them is open, so a test holds one connection (``Driver.conn``) for its whole life and
whatever it defines is visible to the code under test through its own connections.
Domains defined through the helper are undefined afterwards.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..apply_support import SHORT_DOMAIN
from ..conftest import PINNED_HOST

URI = "test:///default"


FITTING_DOMAIN = """\
<domain type='test'>
  <name>{name}</name>
  <memory unit='GiB'>1</memory>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
  <devices/>
</domain>
"""


def short_xml(name: str, description: str = "original") -> str:
    return SHORT_DOMAIN.format(type="test", name=name, description=description)


@dataclass
class Driver:
    """``define`` and ``edit`` return once libvirt has delivered their DEFINED event.

    Delivery is asynchronous: a watcher that subscribes after a define, but before the
    event loop dispatched that define's event, would still receive it and judge the
    domain once more than the test meant. Waiting for our own copy of the event (every
    subscriber gets it in the same dispatch) keeps each test's events its own.
    """

    conn: Any
    tmp: Path
    defined: list[str] = field(default_factory=list)
    _seen: dict[str, int] = field(default_factory=dict)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        import libvirt  # type: ignore[import-untyped]

        def on_event(_conn: Any, dom: Any, event: int, _detail: int, _opaque: Any) -> None:
            if event == libvirt.VIR_DOMAIN_EVENT_DEFINED:
                with self._cond:
                    self._seen[dom.UUIDString()] = self._seen.get(dom.UUIDString(), 0) + 1
                    self._cond.notify_all()

        self.conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                         on_event, None)

    def _define_and_settle(self, xml: str) -> Any:
        with self._cond:
            before = dict(self._seen)
        dom = self.conn.defineXML(xml)
        uuid = dom.UUIDString()
        with self._cond:
            assert self._cond.wait_for(lambda: self._seen.get(uuid, 0) > before.get(uuid, 0),
                                       timeout=10), "libvirt delivered no DEFINED event"
        return dom

    def define(self, xml: str) -> Any:
        dom = self._define_and_settle(xml)
        self.defined.append(dom.name())
        return dom

    def edit(self, name: str, old: str, new: str) -> None:
        """What ``virsh edit`` does: dump the definition, change it, define it again."""
        xml = self.xml(name)
        assert old in xml, f"{old!r} not in {name}'s definition"
        self._define_and_settle(xml.replace(old, new, 1))

    def xml(self, name: str) -> str:
        return str(self.conn.lookupByName(name).XMLDesc(1 | 2))

    @property
    def host_facts(self) -> Path:
        p = self.tmp / "host.json"
        p.write_text(json.dumps(PINNED_HOST))
        return p

    @property
    def audit_log(self) -> Path:
        return self.tmp / "audit.jsonl"

    @property
    def policy(self) -> Path:
        p = self.tmp / "policy.xml"
        if not p.exists():
            p.write_text('<policy xmlns="urn:memlock-guard:policy:1">'
                         f"<audit-log>{self.audit_log}</audit-log></policy>")
        return p

    def cleanup(self) -> None:
        import contextlib

        for name in self.defined:
            with contextlib.suppress(Exception):
                dom = self.conn.lookupByName(name)
                if dom.isActive():
                    dom.destroy()
            with contextlib.suppress(Exception):
                self.conn.lookupByName(name).undefine()
        self.conn.close()


def open_test_driver(tmp: Path) -> Driver:
    import libvirt  # type: ignore[import-untyped]
    from memlock_guard.libvirtd import watch

    # Before the first connection: the test driver binds its event delivery to the
    # event loop registered when it is created.
    watch.start_event_loop()
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    return Driver(libvirt.open(URI), tmp)
