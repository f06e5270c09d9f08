"""The audit log: one JSON object per line for every decision, plus a syslog summary.

Writers are the hook (many at once: libvirtd starts VMs in parallel) and the reconciler.
Each line goes out in one write() on an O_APPEND descriptor under an exclusive flock, so
concurrent writers never interleave, whatever the line length or file system.

Fields (always present, null when not known):
  time            UTC, ISO 8601 with milliseconds
  op              prepare | migrate | restore | apply | ...  (the libvirt hook op, or the verb)
  domain, uuid
  mode            strict | tolerant (auto already resolved)
  required        bytes the kernel will charge, in that mode
  limit           bytes QEMU gets; null when unlimited
  limit_source    hard_limit | locked | libvirt-formula | inherited | kubevirt | ...
  verdict         fits | short | unlimited | error
  action          allow | warn | refuse | adjust | keep | apply ...
  recommended_hard_limit  bytes
  plugin_version, pid, policy (where the policy came from)
  error           what failed, when verdict is error
  ... and whatever the caller adds (e.g. hard_limit_from/hard_limit_to for adjust).

Nothing here raises: an audit failure must never change a decision, so ``log()`` reports
it on stderr and returns False.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import sys
import time

from .. import __version__

TYPE_CHECKING = False  # the hook's cached path writes here and cannot afford typing
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import IO, Any

# A line longer than this is cut down (long strings first) so a runaway error message
# cannot bloat the log; real lines are a few hundred bytes.
MAX_LINE = 8192
_MAX_STR = 1000
LOCK_WAIT = 2.0  # seconds


def now() -> str:
    """UTC, ISO 8601, milliseconds: 2025-01-31T12:00:00.123Z."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def entry(*, op: str, domain: str | None, uuid: str | None, action: str,
          verdict: str | None = None, mode: str | None = None, required: int | None = None,
          limit: int | None = None, limit_source: str | None = None,
          recommended_hard_limit: int | None = None, policy: str | None = None,
          error: str | None = None, **extra: Any) -> dict[str, Any]:
    """One audit record; ``extra`` keys are added after the standard ones."""
    rec: dict[str, Any] = {
        "time": now(), "op": op, "domain": domain, "uuid": uuid, "mode": mode,
        "required": required, "limit": limit, "limit_source": limit_source,
        "verdict": verdict, "action": action,
        "recommended_hard_limit": recommended_hard_limit,
        "plugin_version": __version__, "pid": os.getpid(), "policy": policy, "error": error,
    }
    rec.update(extra)
    return rec


def encode(record: Mapping[str, Any]) -> bytes:
    """The record as one line of JSON (newline included), no longer than MAX_LINE."""
    line = json.dumps(record, separators=(",", ":"), default=str, ensure_ascii=True)
    if len(line) + 1 > MAX_LINE:
        clipped = {k: (v[:_MAX_STR] + "…" if isinstance(v, str) and len(v) > _MAX_STR else v)
                   for k, v in record.items()}
        line = json.dumps(clipped, separators=(",", ":"), default=str, ensure_ascii=True)
        if len(line) + 1 > MAX_LINE:
            keep = ("time", "op", "domain", "uuid", "verdict", "action", "plugin_version")
            line = json.dumps({**{k: record.get(k) for k in keep}, "truncated": True},
                              separators=(",", ":"), default=str, ensure_ascii=True)
    return line.encode("ascii") + b"\n"


def append(path: str, record: Mapping[str, Any]) -> None:
    """Append one line to ``path`` atomically; raises OSError."""
    data = encode(record)
    parent = os.path.dirname(path)
    if parent and not os.path.isdir(parent):
        os.makedirs(parent, mode=0o750, exist_ok=True)
    # O_NONBLOCK: a FIFO with no reader (a symlink to one, a mistyped path) would block
    # open() for ever, after the hook's deadline has been disarmed, and libvirtd with it.
    # It has no effect on regular files, the only kind we then accept.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK
                 | getattr(os, "O_NOCTTY", 0), 0o640)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        # O_APPEND alone keeps writes from overwriting each other; the lock also keeps a
        # short write's remainder (full disk, signals) from landing after another line.
        _lock(fd)
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    finally:
        os.close(fd)  # releases the lock


def _lock(fd: int, wait: float = LOCK_WAIT) -> None:
    """flock, but bounded: a writer stuck holding the lock must not hang a VM start.

    After ``wait`` seconds we write unlocked; O_APPEND still keeps the line whole on
    local file systems, and losing the lock beats hanging libvirtd.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return
            time.sleep(0.005)


def summary(record: Mapping[str, Any]) -> str:
    """The one-line syslog form of a record."""
    parts = [f"{record.get('op')} {record.get('domain')}: {record.get('action')}",
             f"verdict={record.get('verdict')}"]
    for key in ("mode", "required", "limit", "recommended_hard_limit"):
        if record.get(key) is not None:
            parts.append(f"{key}={record[key]}")
    if record.get("error"):
        parts.append(f"error={str(record['error'])[:200]}")
    return " ".join(parts)


def to_syslog(record: Mapping[str, Any], *, socket_path: str = "/dev/log") -> None:
    """Send the summary to syslog when a syslog daemon listens; quietly skip otherwise."""
    if not os.path.exists(socket_path):
        return
    import syslog  # lazily: the hook's non-acting ops never get here

    action = record.get("action")
    prio = (syslog.LOG_ERR if action == "refuse" or record.get("verdict") == "error"
            else syslog.LOG_WARNING if action == "warn" else syslog.LOG_INFO)
    syslog.openlog("memlock-guard", syslog.LOG_PID, syslog.LOG_DAEMON)
    try:
        syslog.syslog(prio, summary(record))
    finally:
        syslog.closelog()


def log(path: str | None, record: Mapping[str, Any], *, use_syslog: bool = True,
        stderr: IO[str] | None = None) -> bool:
    """Write ``record`` to the audit log and syslog; False (and a line on stderr) on failure.

    ``path`` None skips the file (syslog only).
    """
    ok = True
    if path:
        try:
            append(path, record)
        except OSError as e:
            ok = False
            print(f"memlock-guard: cannot write audit log {path}: {e.strerror or e}",
                  file=stderr or sys.stderr)
    if use_syslog:
        # Best effort: the file above is the record.
        with contextlib.suppress(OSError):
            to_syslog(record)
    return ok


def read(path: str) -> list[dict[str, Any]]:
    """Every record in an audit log (for tests and `audit` tooling); raises on a bad line."""
    with open(path, encoding="ascii") as f:
        return [json.loads(line) for line in f if line.strip()]
