"""A libvirt domain driven for a measurement: through libvirt-python, else virsh."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from typing import Any, Protocol

from .qemu_text import MeasureError


class Target(Protocol):
    """A libvirt domain that can be driven for a measurement."""

    name: str
    log_path: str | None  # where QEMU's stderr (and so its trace output) goes
    pid_path: str | None  # where libvirt writes QEMU's pid (local URIs only)

    def hmp(self, command: str) -> str: ...
    def xml(self) -> str: ...
    def is_active(self) -> bool: ...
    def is_persistent(self) -> bool: ...
    def start_paused(self) -> None: ...
    def resume(self) -> None: ...
    def destroy(self) -> None: ...
    def state(self) -> tuple[str, str]:
        """libvirt's state and reason, as ``virsh domstate --reason`` names them:
        ("running", "unpaused"), ("paused", "unknown"), ("shut off", "crashed") ..."""
        ...


# virDomainState and its reasons (libvirt-domain.h), named as virsh prints them
# (virshDomainStateToString, virshDomainStateReasonToString, tools/virsh-domain-monitor.c).
STATES = ("no state", "running", "idle", "paused", "in shutdown", "shut off", "crashed",
          "pmsuspended")
REASONS: dict[str, tuple[str, ...]] = {
    "no state": ("unknown",),
    "running": ("unknown", "booted", "migrated", "restored", "from snapshot", "unpaused",
                "migration canceled", "save canceled", "event wakeup", "crashed",
                "post-copy", "post-copy failed"),
    "idle": ("unknown",),
    "paused": ("unknown", "user", "migrating", "saving", "dumping", "I/O error",
               "watchdog", "from snapshot", "shutting down", "creating snapshot",
               "crashed", "starting up", "post-copy", "post-copy failed", "api error"),
    "in shutdown": ("unknown", "user"),
    "shut off": ("unknown", "shutdown", "destroyed", "crashed", "migrated", "saved",
                 "failed", "from snapshot", "daemon"),
    "crashed": ("unknown", "panicked"),
    "pmsuspended": ("unknown",),
}


def state_names(state: int, reason: int) -> tuple[str, str]:
    """virDomainGetState's numbers as the names virsh prints."""
    name = STATES[state] if 0 <= state < len(STATES) else f"state {state}"
    reasons = REASONS.get(name, ())
    return name, reasons[reason] if 0 <= reason < len(reasons) else f"reason {reason}"


def default_log_path(uri: str | None, name: str) -> str | None:
    """libvirt's per-domain QEMU log, which receives QEMU's trace output (local only)."""
    if uri in (None, "", "qemu:///system"):
        return f"/var/log/libvirt/qemu/{name}.log"
    if uri == "qemu:///session":
        return os.path.expanduser(f"~/.cache/libvirt/qemu/log/{name}.log")
    return None  # remote: the log is on another machine


def default_pid_path(uri: str | None, name: str) -> str | None:
    """libvirt's QEMU pid file (qemuProcessStart: cfg->stateDir/NAME.pid), local only."""
    if uri in (None, "", "qemu:///system"):
        return f"/run/libvirt/qemu/{name}.pid"
    if uri == "qemu:///session":
        return os.path.expanduser(f"~/.cache/libvirt/qemu/run/{name}.pid")
    return None


def qemu_pid(target: Target) -> int:
    """The pid of the domain's QEMU, checked against its command line (-name guest=NAME)."""
    if target.pid_path is None:
        raise MeasureError("QEMU's pid is not known for a remote connection")
    try:
        with open(target.pid_path) as f:
            pid = int(f.read(32).strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read(1 << 20).split(b"\0")
    except (OSError, ValueError) as e:
        raise MeasureError(f"cannot find QEMU's pid ({target.pid_path}): {e}") from None
    # libvirt passes -name guest=NAME,debug-threads=on, with commas in NAME doubled.
    guest = f"guest={target.name.replace(',', ',,')}".encode()
    if not any(a == guest or a.startswith(guest + b",") for a in argv):
        raise MeasureError(f"process {pid} of {target.pid_path} is not {target.name}'s QEMU")
    return pid


class LibvirtTarget:
    """Through libvirt-python: a monitor round trip takes ~2 ms, so sampling is dense."""

    def __init__(self, name: str, uri: str | None = None) -> None:
        import libvirt_qemu  # type: ignore[import-untyped]

        from ..libvirtd import client as lc

        self._libvirt: Any = lc.require_libvirt()
        self._qemu: Any = libvirt_qemu
        uri = uri or lc.DEFAULT_URI
        self._conn: Any = lc.connect(uri)  # retried while the daemon is absent
        self._dom: Any = lc.lookup(self._conn, name)  # by name, UUID or id
        self.name = str(self._dom.name())
        self.log_path = default_log_path(uri, self.name)
        self.pid_path = default_pid_path(uri, self.name)

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except self._libvirt.libvirtError as e:
            raise MeasureError(f"{self.name}: {_libvirt_message(e)}") from None

    def hmp(self, command: str) -> str:
        flag = self._qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
        return str(self._call(lambda: self._qemu.qemuMonitorCommand(self._dom, command, flag)))

    def xml(self) -> str:
        return str(self._call(lambda: self._dom.XMLDesc(0)))

    def is_active(self) -> bool:
        return bool(self._call(self._dom.isActive))

    def is_persistent(self) -> bool:
        return bool(self._call(self._dom.isPersistent))

    def start_paused(self) -> None:
        self._call(lambda: self._dom.createWithFlags(self._libvirt.VIR_DOMAIN_START_PAUSED))

    def resume(self) -> None:
        self._call(self._dom.resume)

    def destroy(self) -> None:
        self._call(self._dom.destroy)

    def state(self) -> tuple[str, str]:
        state, reason = self._call(self._dom.state)
        return state_names(int(state), int(reason))


def _libvirt_message(e: Any) -> str:
    return str(e.get_error_message() if hasattr(e, "get_error_message") else e)


class VirshTarget:
    """Through the virsh client, when libvirt-python is not installed (slower sampling)."""

    def __init__(self, name: str, uri: str | None = None) -> None:
        if shutil.which("virsh") is None:
            raise MeasureError("neither libvirt-python nor virsh is available")
        self.name = name
        self.uri = uri
        self.log_path = default_log_path(uri, name)
        self.pid_path = default_pid_path(uri, name)
        self._virsh("dominfo", name)  # fails early when the domain does not exist

    def _virsh(self, *args: str) -> str:
        cmd = ["virsh", *(["-c", self.uri] if self.uri else []), *args]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.SubprocessError) as e:
            raise MeasureError(f"virsh {args[0]}: {e}") from None
        if p.returncode != 0:
            msg = p.stderr.strip().removeprefix("error: ").replace("\nerror: ", ": ")
            raise MeasureError(f"virsh {args[0]} {self.name}: {msg}")
        return p.stdout

    def hmp(self, command: str) -> str:
        return self._virsh("qemu-monitor-command", self.name, "--hmp", command)

    def xml(self) -> str:
        return self._virsh("dumpxml", self.name)

    def is_active(self) -> bool:
        return self._virsh("domstate", self.name).strip() not in ("shut off", "crashed")

    def is_persistent(self) -> bool:
        return "Persistent:     yes" in self._virsh("dominfo", self.name)

    def start_paused(self) -> None:
        self._virsh("start", self.name, "--paused")

    def resume(self) -> None:
        self._virsh("resume", self.name)

    def destroy(self) -> None:
        self._virsh("destroy", self.name)

    def state(self) -> tuple[str, str]:
        out = self._virsh("domstate", "--reason", self.name).strip()  # "paused (unknown)"
        state, _, reason = out.partition(" (")
        return state, reason.rstrip(")")


def open_target(name: str, uri: str | None = None) -> Target:
    """libvirt-python when importable (with tenacity, as the other verbs), else virsh."""
    from importlib.util import find_spec

    if find_spec("libvirt_qemu") is None or find_spec("tenacity") is None:
        return VirshTarget(name, uri)
    return LibvirtTarget(name, uri)
