"""The reconciler: raise persistent hard_limits as soon as domains are defined or changed.

Threads: libvirt's default event loop runs in a daemon thread (virEventRunDefaultImpl);
its callbacks only put work on a queue. The caller's thread takes work off the queue and
does every libvirt call and judgement, so a slow judgement never stalls event delivery
or the keepalive that notices a dead daemon.

What triggers a reconcile (reconcile.reconcile, the same rules as ``apply``):
- lifecycle DEFINED (added, updated, renamed, from snapshot) and STOPPED (a definition
  edited while the VM ran becomes the persistent one when it stops);
- device added / removed, and metadata changes (``virsh metadata`` can change the
  domain's policy override);
- a resync of every persistent domain at start, after every reconnect, when the policy
  file changes, and every ``resync_interval`` seconds: ``virsh attach-device --config``
  and ``virsh memtune --config`` emit no event at all (checked on libvirt 9.0).

Connection loss (libvirtd restart, crash, keepalive timeout) is seen by the close
callback or by a failing call; the reconciler then reconnects with tenacity's
exponential backoff + jitter, forever, and resyncs, so domains defined while the daemon
was down are handled.

Its own redefinition comes back as a DEFINED event. Two guards keep that from looping:
``apply`` is idempotent (the raised definition judges "fits"), and the digest of each
definition we wrote is remembered, so that event is recognised without judging at all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..policy import load as policymod
from ..policy import model as policy_model
from ..support import audit
from ..support.errors import MemlockGuardError
from . import apply as applymod
from . import client as lc
from .reconcile import Judge, raise_record, reconcile

log = logging.getLogger("memlock_guard.libvirtd.watch")

_loop_lock = threading.Lock()
_loop_started = False


def start_event_loop() -> None:
    """Register libvirt's default event loop and run it in a daemon thread, once.

    Must happen before the first connection is opened: libvirt binds a connection's
    events (and keepalive) to the loop registered when it was opened.
    """
    global _loop_started
    lv = lc.require_libvirt()
    with _loop_lock:
        if _loop_started:
            return
        lv.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                if lv.virEventRunDefaultImpl() < 0:
                    time.sleep(0.1)  # never spin if the loop itself fails

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _loop_started = True


@dataclass(frozen=True, slots=True)
class Work:
    kind: str  # domain | resync | closed
    uuid: str | None = None
    trigger: str = ""
    generation: int = 0


class PolicySource:
    """The host policy, reloaded when its file changes; the last good one on error."""

    def __init__(self, path: str | None, named: bool) -> None:
        self.path, self.named = path, named
        self._stamp: tuple[int, int, int] | None = None
        self.current = policymod.load(path, named=named) if path else policy_model.DEFAULTS
        self._stamp = self._stat()

    def _stat(self) -> tuple[int, int, int] | None:
        if not self.path:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def refresh(self) -> bool:
        """Reload when the file changed; True when the policy in force changed."""
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            new = policymod.load(self.path, named=self.named)
        except MemlockGuardError as e:
            log.error("policy %s is unusable, keeping the previous one: %s", self.path, e)
            return False
        changed = new != self.current
        self.current = new
        if changed:
            log.info("policy reloaded from %s", self.path)
        return changed


_DEFINED_DETAILS = {0: "added", 1: "updated", 2: "renamed", 3: "from-snapshot"}


class Watcher:
    """Reconcile every domain of one libvirt URI until ``stop`` is set."""

    def __init__(self, uri: str, policy: PolicySource,
                 make_judge: Callable[[Any, policy_model.Policy], Judge], *,
                 dry_run: bool = False, resync_interval: float = 300.0,
                 match: str = "*", force: bool = False,
                 backoff: lc.Backoff = lc.WATCH_BACKOFF,
                 keepalive: tuple[int, int] = (5, 3)) -> None:
        self.uri = uri
        self.policy = policy
        self.make_judge = make_judge
        self.dry_run = dry_run
        self.force = force  # raise OpenStack Nova instances too
        self.match = match
        self.resync_interval = resync_interval
        self.backoff = backoff
        self.keepalive = keepalive
        self.queue: queue.Queue[Work] = queue.Queue()
        self.generation = 0
        # uuid -> digest of the definition we last wrote.
        self._ours: dict[str, str] = {}
        # Counters for tests and the exit log line.
        self.stats = {"connects": 0, "resyncs": 0, "judged": 0, "raised": 0, "errors": 0}

    # -- event callbacks (libvirt's event thread: enqueue only) --------------------------

    def _on_lifecycle(self, _conn: Any, dom: Any, event: int, detail: int, gen: int) -> None:
        lv = lc.require_libvirt()
        if event == lv.VIR_DOMAIN_EVENT_DEFINED:
            trigger = f"defined/{_DEFINED_DETAILS.get(detail, detail)}"
        elif event == lv.VIR_DOMAIN_EVENT_STOPPED:
            trigger = "stopped"
        elif event == lv.VIR_DOMAIN_EVENT_UNDEFINED:
            self._ours.pop(dom.UUIDString(), None)
            return
        else:
            return
        self.queue.put(Work("domain", dom.UUIDString(), trigger, gen))

    def _on_device(self, _conn: Any, dom: Any, alias: str, gen: int) -> None:
        self.queue.put(Work("domain", dom.UUIDString(), f"device {alias}", gen))

    def _on_metadata(self, _conn: Any, dom: Any, _mtype: int, nsuri: str | None,
                     gen: int) -> None:
        self.queue.put(Work("domain", dom.UUIDString(), f"metadata {nsuri or ''}".strip(), gen))

    def _on_close(self, _conn: Any, reason: int, gen: int) -> None:
        reasons = {0: "error", 1: "end of file", 2: "keepalive timeout", 3: "client"}
        self.queue.put(Work("closed", None, reasons.get(reason, str(reason)), gen))

    # -- the main loop ---------------------------------------------------------------

    def run(self, stop: threading.Event) -> int:
        start_event_loop()
        while not stop.is_set():
            try:
                conn = lc.connect(self.uri, backoff=self.backoff, stop=stop,
                                  on_retry=lambda n, why: log.warning(
                                      "cannot reach libvirt at %s (attempt %d): %s",
                                      self.uri, n, why))
            except lc.LibvirtUnreachable:
                if stop.is_set():
                    break
                raise
            self.generation += 1
            self.stats["connects"] += 1
            lv = lc.require_libvirt()
            try:
                self._subscribe(conn, self.generation)
                log.info("connected to %s; watching domain definitions", self.uri)
                self._serve(conn, self.generation, stop)
            except lc.LibvirtUnreachable as e:
                log.warning("lost libvirt: %s", e)
            except (MemlockGuardError, lv.libvirtError) as e:
                # Not a lost connection (host facts unreadable, a call refused): start
                # over, but after a pause, so a lasting cause cannot make us spin.
                log.error("cannot watch %s: %s", self.uri, lc.one_line(e))
                stop.wait(self.backoff.maximum)
            finally:
                self._disconnect(conn)
            if not stop.is_set():
                log.warning("connection to %s lost; reconnecting", self.uri)
        log.info("stopping (%s)", ", ".join(f"{k} {v}" for k, v in self.stats.items()))
        return 0

    def _subscribe(self, conn: Any, gen: int) -> None:
        lv = lc.require_libvirt()
        conn.registerCloseCallback(self._on_close, gen)
        try:
            conn.domainEventRegisterAny(None, lv.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                        self._on_lifecycle, gen)
        except lv.libvirtError as e:
            raise lc.wrap(e, "subscribing to domain events") from None
        optional = ((lv.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED, self._on_device),
                    (lv.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, self._on_device),
                    (lv.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE, self._on_metadata))
        for event_id, cb in optional:
            try:
                conn.domainEventRegisterAny(None, event_id, cb, gen)
            except lv.libvirtError as e:  # an old daemon or a driver without them
                log.info("event %d not available: %s", event_id, lc.one_line(e))
        # Local drivers (test://) have no keepalive; nothing is lost without it there.
        with contextlib.suppress(lv.libvirtError):
            conn.setKeepAlive(*self.keepalive)

    def _disconnect(self, conn: Any) -> None:
        # Best effort: the connection may already be dead. Dropping it also drops its
        # event registrations and close callback.
        with contextlib.suppress(Exception):
            conn.unregisterCloseCallback()
        with contextlib.suppress(Exception):
            conn.close()

    def _serve(self, conn: Any, gen: int, stop: threading.Event) -> None:
        judge = self.make_judge(conn, self.policy.current)
        self.queue.put(Work("resync", trigger="connect", generation=gen))
        next_resync = time.monotonic() + self.resync_interval
        while not stop.is_set():
            if self.resync_interval > 0 and time.monotonic() >= next_resync:
                self.queue.put(Work("resync", trigger="interval", generation=gen))
                next_resync = time.monotonic() + self.resync_interval
            try:
                first: Work | None = self.queue.get(timeout=0.5)
            except queue.Empty:
                first = None
            # Checked after the wait, so work that arrives with a new policy file is
            # judged under it.
            if self.policy.refresh():
                # Every domain may judge differently now (mode, margin): judge them all.
                judge = dataclasses.replace(judge, policy=self.policy.current,
                                            pm=policy_model.plugin_manager(self.policy.current))
                self._ours.clear()
                self.queue.put(Work("resync", trigger="policy", generation=gen))
            if first is None:
                if not conn.isAlive():
                    return
                continue
            batch = [first, *self._drain()]
            if any(w.kind == "closed" and w.generation == gen for w in batch):
                closed = next(w for w in batch if w.kind == "closed")
                log.warning("libvirt closed the connection (%s)", closed.trigger)
                return
            if any(w.kind == "resync" for w in batch):
                trigger = next(w.trigger for w in batch if w.kind == "resync")
                self._resync(conn, judge, trigger)
                continue
            seen: set[str] = set()
            for w in batch:  # coalesce bursts: one reconcile per domain per batch
                if w.kind == "domain" and w.uuid and w.uuid not in seen:
                    seen.add(w.uuid)
                    self._one(conn, judge, w.uuid, w.trigger)

    def _drain(self) -> list[Work]:
        out = []
        while True:
            try:
                out.append(self.queue.get_nowait())
            except queue.Empty:
                return out

    def _resync(self, conn: Any, judge: Judge, trigger: str) -> None:
        self.stats["resyncs"] += 1
        doms = [d for d in lc.all_domains(conn, persistent_only=True)
                if fnmatch.fnmatchcase(d.name(), self.match)]
        log.info("resync (%s): %d persistent domain(s)", trigger, len(doms))
        for dom in doms:
            self._reconcile(conn, judge, dom, f"resync/{trigger}")

    def _one(self, conn: Any, judge: Judge, uuid: str, trigger: str) -> None:
        lv = lc.require_libvirt()
        try:
            dom = conn.lookupByUUIDString(uuid)
        except lv.libvirtError as e:
            if e.get_error_code() == lv.VIR_ERR_NO_DOMAIN:
                return  # undefined since the event: nothing to do
            raise lc.wrap(e, "looking up a domain") from None
        self._reconcile(conn, judge, dom, trigger)

    def _reconcile(self, conn: Any, judge: Judge, dom: Any, trigger: str) -> None:
        lv = lc.require_libvirt()
        uuid = dom.UUIDString()
        try:
            name = dom.name()
            if not fnmatch.fnmatchcase(name, self.match) or not lc.is_persistent(dom):
                return
            xml = lc.persistent_xml(dom)
            if self._ours.get(uuid) == applymod.xml_digest(xml):
                log.debug("%s: our own definition (%s), not judged again", name, trigger)
                return
            self.stats["judged"] += 1
            out = reconcile(conn, dom, judge, dry_run=self.dry_run, force=self.force)
        except (lc.LibvirtUnreachable, lc.DomainGone) as e:
            if isinstance(e, lc.DomainGone):
                return  # undefined since the event or the listing: nothing to do
            raise
        except lv.libvirtError as e:
            if e.get_error_code() == lv.VIR_ERR_NO_DOMAIN:
                return
            if lc.is_connection_error(e):
                raise lc.wrap(e, "reconciling") from None
            self._error(dom, trigger, lc.one_line(e), judge)
            return
        except MemlockGuardError as e:
            self._error(dom, trigger, str(e), judge)
            return
        except Exception as e:  # a bug must cost one domain, not the reconciler
            log.exception("internal error on %s", uuid)
            self._error(dom, trigger, f"internal error: {type(e).__name__}: {e}", judge)
            return
        if out.result is None or not out.result.changed:
            short = out.report is not None and out.report.verdict.fit.value == "short"
            # A short Nova instance is worth a line: only its flavor or image can fix it.
            (log.info if out.result is None and short else log.debug)(
                "%s: %s (%s)", name, out.result.plan.reason if out.result else out.skipped,
                trigger)
            return
        if out.report is not None and out.report.domain.nova is not None:
            log.warning("%s is an OpenStack Nova instance (--force): the hard_limit lasts "
                        "only until Nova's next hard reboot, stop/start, resize or migration",
                        name)
        record = raise_record(out, op="watch", trigger=trigger)
        if self.dry_run:
            record["dry_run"] = True
            record["action"] = "would-apply"
        audit.log(judge.policy.audit_log, record)
        plan = out.result.plan
        log.info("%s: %s hard_limit %s -> %s KiB (%s; %s)", name,
                 "would raise" if self.dry_run else "raised",
                 "unset" if plan.current_hard_limit is None else plan.current_hard_limit // 1024,
                 (plan.new_hard_limit or 0) // 1024, plan.reason, trigger)
        if out.written:
            self.stats["raised"] += 1
            # The digest of the text we sent, not of a re-read: an edit landing right
            # after our define must not be mistaken for ours. libvirt stores our text
            # byte for byte (apply writes its layout); were it ever to differ, the guard
            # would just not fire, and the judgement (idempotent) would keep it.
            self._ours[uuid] = applymod.xml_digest(out.result.new_xml)

    def _error(self, dom: Any, trigger: str, message: str, judge: Judge) -> None:
        self.stats["errors"] += 1
        try:
            name, uuid = dom.name(), dom.UUIDString()
        except Exception:
            name, uuid = "?", None
        log.error("%s: not reconciled (%s): %s", name, trigger, message)
        audit.log(judge.policy.audit_log,
                  audit.entry(op="watch", domain=name, uuid=uuid, action="none",
                              verdict="error", error=message, trigger=trigger,
                              policy=judge.policy.origin))
