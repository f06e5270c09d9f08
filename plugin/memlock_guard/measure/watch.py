"""Whether the guest still runs while ``measure --boot`` follows it, and what stopped it.

A guest that dies during the boot maps nothing more, so what was sampled until then is
not the boot's peak. Seen on this project's test host: OVMF under KVM stops at its
first instructions (the domain log says ``KVM internal error. Suberror: 1`` and
``emulation failure``; QEMU's run state is ``internal-error``, which libvirt 9.0 reports
as ``paused (unknown)``), and the old tool reported the 256 KiB it had sampled as a
measurement. Two signs are watched, whichever comes first:

- the domain's state (virDomainGetState): anything but running, e.g. ``paused`` with
  any reason (we resumed it; only a fault or another client pauses it again),
  ``shut off``/``crashed`` (a guest panic with ``<on_crash>`` destroy or preserve);
- new lines of the domain's QEMU log with one of ``CRASH_MARKERS``: QEMU prints them
  (accel/kvm/kvm-all.c, kvm_handle_internal_error) right before it stops the guest.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from .qemu_text import MeasureError
from .target import Target

# What QEMU writes to stderr (the domain log) when KVM cannot go on with the guest.
CRASH_MARKERS = ("KVM internal error", "emulation failure")
RUNNING = frozenset({"running", "idle"})  # idle: libvirt's VIR_DOMAIN_BLOCKED
STATE_INTERVAL = 0.1  # seconds between two state queries (a virsh call costs ~30 ms)
_READ_CHUNK = 1 << 20  # log bytes scanned per poll, at most; the rest on the next
_MAX_CARRY = 4096  # of a line not yet ended, kept until the rest of it is read


@dataclass(frozen=True, slots=True)
class Stop:
    """The guest stopped running while it was followed."""

    state: tuple[str, str]  # libvirt's state and reason, as virsh names them
    qemu_status: str | None  # QEMU's `info status` when the process still answers
    log_lines: tuple[str, ...]  # the log lines with a crash marker
    after: float  # seconds after resume

    @property
    def crashed(self) -> bool:
        return bool(self.log_lines) or "crashed" in self.state or "panicked" in self.state

    @property
    def kvm_failed(self) -> bool:
        return any(CRASH_MARKERS[0] in line for line in self.log_lines)

    def describe(self) -> str:
        """What happened, in a few words: state, QEMU's run state, the log's words."""
        state, reason = self.state
        what = [f"{state} ({reason})"]
        if self.qemu_status:
            what.append(f"QEMU: {self.qemu_status}")
        if self.log_lines:
            what.append("log: " + " / ".join(repr(line) for line in self.log_lines[:3]))
        return "; ".join(what)


class GuestWatch:
    """Polls the domain's state and scans its log for crash markers (see the module)."""

    def __init__(self, target: Target, log_offset: int, resumed: float, *,
                 clock: Callable[[], float]) -> None:
        self.target = target
        self.resumed = resumed
        self._clock = clock
        self._log_pos = log_offset
        self._carry = ""
        self._lines: list[str] = []
        self._next_state = resumed

    def poll(self, *, force: bool = False) -> Stop | None:
        """None while the guest runs; else what stopped it. ``force`` asks libvirt now
        (after a monitor command failed), not at the next STATE_INTERVAL."""
        now = self._clock()
        self._scan_log()
        state = None
        if force or self._lines or now >= self._next_state:
            self._next_state = now + STATE_INTERVAL
            try:
                state = self.target.state()
            except MeasureError:
                state = ("unknown", "libvirt did not answer")
            if state[0] in RUNNING and not self._lines:
                return None
        if state is None:
            return None
        return Stop(state, self._qemu_status(state), tuple(self._lines), now - self.resumed)

    def _qemu_status(self, state: tuple[str, str]) -> str | None:
        if state[0] not in ("paused", "crashed", "running", "idle"):
            return None  # no QEMU process left to ask
        try:
            out = self.target.hmp("info status").strip()
        except MeasureError:
            return None
        return out.removeprefix("VM status: ") or None

    def _scan_log(self) -> None:
        path = self.target.log_path
        if path is None:
            return
        try:
            with open(path, "rb") as f:
                f.seek(self._log_pos)
                chunk = f.read(_READ_CHUNK)
        except OSError:
            return
        if not chunk:
            return
        self._log_pos += len(chunk)
        # Whole lines only: a line cut by the read waits for the rest of it.
        complete, _, self._carry = (self._carry + chunk.decode("utf-8", "replace")
                                    ).rpartition("\n")
        self._carry = self._carry[-_MAX_CARRY:]
        for line in complete.splitlines():
            if any(m in line for m in CRASH_MARKERS):
                line = line.strip()[:120]
                if line not in self._lines:
                    self._lines.append(line)


def log_size(path: str | None) -> int:
    if path is None:
        return 0
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
