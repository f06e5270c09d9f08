"""What the running QEMUs of a uid already pin, for the hook (iommufd user accounting).

Only a domain under iommufd user accounting asks (accounting/backend.py); for every
other domain the hook reads nothing here. The hook never calls libvirt (libvirtd holds
the domain while it runs; an import-linter contract holds this), so it reads what
libvirt keeps on disk: the status XML of each running domain,
``/run/libvirt/qemu/NAME.xml`` (root-only; the hook runs as root), a ``<domstatus
pid=...>`` around the live ``<domain>``. Each becomes a RunningVM (accounting/pins.py,
which holds the rule for the sum), with VmPin and VmLck read fresh from
/proc/PID/status.

Cost, and the cache: parsing a status file and building its ledger costs a few ms, so
the record made from each file is kept in ``running-pins.cache`` beside the decision
cache, keyed by the file's inode, size and mtime (libvirt rewrites the file whenever
the live definition changes: a hotplug, a memtune, a start). A new or changed file is
parsed again; a vanished one is dropped; the process of every record is checked to be
that guest's QEMU still (its ``-name guest=NAME``), so a stale file counts nothing.
The per-uid sum itself is recomputed at every decision from those records and /proc:
a sum kept on its own would go stale as soon as a guest maps more memory. Decisions
that depend on it are never replayed from the decision cache (decision.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from .. import __version__
from ..accounting.engine import build_ledger
from ..accounting.pins import RunningVM, needs_ledger, running_vm, uid_pinned
from ..domain import Domain
from ..host import sources
from ..host.facts import HostFacts
from ..support import xmlsafe
from ..support.defaults import MAX_XML_BYTES
from ..support.errors import InputError
from ..support.files import write_atomically

CACHE_NAME = "running-pins.cache"
PROC = "/proc"
FORMAT = 1
MAX_CACHE_BYTES = 4 * 1024 * 1024


def uid_pinned_now(candidate: Domain, host: HostFacts, *, status_dir: str | None = None,
                   cache_dir: str | None = None, proc: str | None = None) -> int:
    """Bytes the other running QEMUs of ``candidate``'s uid have charged to the user.

    ``status_dir`` and ``proc`` default to libvirt's and the kernel's (tests point
    them elsewhere)."""
    uid = sources.resolve_user(candidate.dac_user) if candidate.dac_static else None
    running = list(running_vms(status_dir or sources.QEMU_STATUS_DIR, host,
                               cache_dir=cache_dir, proc=proc or PROC))
    return uid_pinned(candidate, uid, running)


def running_vms(status_dir: str, host: HostFacts, *, cache_dir: str | None = None,
                proc: str = "/proc") -> Iterator[RunningVM]:
    path = os.path.join(cache_dir, CACHE_NAME) if cache_dir else None
    old = _load(path)
    new: dict[str, Any] = {}
    try:
        entries = sorted(os.scandir(status_dir), key=lambda e: e.name)
    except OSError:
        entries = []
    for e in entries:
        if not e.name.endswith(".xml") or not e.is_file(follow_symlinks=False):
            continue
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        key = [st.st_ino, st.st_size, st.st_mtime_ns]
        rec = old.get(e.name)
        if not isinstance(rec, dict) or rec.get("key") != key:
            rec = _record(e.path, key, host)
        new[e.name] = rec
        vm = _vm(rec)
        if vm is None:
            continue
        pid = rec.get("pid")
        if not isinstance(pid, int) or not sources.is_guest_process(pid, vm.name, proc):
            continue  # not running any more (a status file left behind)
        pin, lck = sources.process_pins(pid, proc)
        yield vm._replace(vm_pin=pin, vm_lck=lck)
    if path is not None and new != old:
        _store(path, new)


def _record(path: str, key: list[int], host: HostFacts) -> dict[str, Any]:
    """What one status file says, as JSON; ``vm`` None when it cannot be read."""
    try:
        data = xmlsafe.read_file(path, what="status XML", max_bytes=MAX_XML_BYTES)
        root = xmlsafe.parse(data, what=f"status XML {path}")
        dom_el = root.find("domain") if root.tag == "domstatus" else None
        if dom_el is None:
            return {"key": key, "vm": None}
        pid = int(root.get("pid") or "0")
        domain = Domain.from_xml(dom_el)
    except (InputError, ValueError):
        return {"key": key, "vm": None}
    ledger = build_ledger(domain, host) if needs_ledger(domain) else None
    uid = sources.resolve_user(domain.dac_user)
    vm = running_vm(domain, ledger, uid=uid, libvirt_version=host.libvirt_version)
    return {"key": key, "pid": pid, "vm": list(vm)}


def _vm(rec: dict[str, Any]) -> RunningVM | None:
    fields = rec.get("vm")
    if not isinstance(fields, list) or len(fields) != len(RunningVM._fields):
        return None
    try:
        return RunningVM(*fields)
    except TypeError:
        return None


def _load(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read(MAX_CACHE_BYTES + 1))
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("format") != FORMAT \
            or doc.get("version") != __version__ or not isinstance(doc.get("files"), dict):
        return {}
    files: dict[str, Any] = doc["files"]
    return files


def _store(path: str, files: dict[str, Any]) -> None:
    text = json.dumps({"format": FORMAT, "version": __version__, "files": files},
                      separators=(",", ":"))
    if len(text) > MAX_CACHE_BYTES:
        return
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        write_atomically(path, text, 0o600)
    except OSError:
        pass  # a cache that cannot be written is only slower next time
