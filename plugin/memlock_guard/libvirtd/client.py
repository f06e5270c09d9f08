"""Talking to libvirt from the CLI and the reconciler: connect, look up, read, redefine.

Never imported by the hook: libvirt runs the hook while it holds the domain, so a call
back into libvirt from there would deadlock, and the import alone costs start latency.

Connections are retried with tenacity (exponential backoff with jitter, so a fleet of
watchers does not reconnect in lock-step after a libvirtd restart). Only errors that
mean "the daemon is not there (yet)" are retried; a refused authentication or an
unknown URI scheme fails at once. Every libvirt error that reaches a user becomes one
line: ``LibvirtUnreachable`` (exit 2, "cannot reach libvirt at URI: …"),
``InputError`` for an unknown domain, ``LibvirtFailure`` for anything else.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tenacity

from ..support.errors import InputError, MemlockGuardError

try:
    import libvirt  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - the package's [libvirt] extra is missing
    libvirt = None

DEFAULT_URI = "qemu:///system"

# Persistent definition, secrets included: without SECURE, libvirt leaves out VNC/SPICE
# passwords and a redefinition from that XML would silently drop them.
XML_INACTIVE_SECURE = 1 | 2  # VIR_DOMAIN_XML_INACTIVE | VIR_DOMAIN_XML_SECURE
XML_LIVE_SECURE = 1  # VIR_DOMAIN_XML_SECURE


class LibvirtUnreachable(MemlockGuardError):
    """The daemon cannot be reached (not running, socket missing, connection lost)."""


class LibvirtFailure(MemlockGuardError):
    """libvirt refused or failed an operation; the message is libvirt's, on one line."""


class DomainGone(LibvirtFailure):
    """The domain was undefined while we were working on it."""


def require_libvirt() -> Any:
    if libvirt is None:
        raise MemlockGuardError("libvirt-python is not installed; install memlock-guard[libvirt] "
                                "(libvirt-python and tenacity) for this verb")
    return libvirt


def _silence_default_handler() -> None:
    # libvirt prints every error to stderr by default ("libvirt: XML-RPC error : …");
    # we report errors ourselves, once, on one line.
    require_libvirt().registerErrorHandler(lambda _ctx, _err: None, None)


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 300 else text[:300] + "…"


def is_connection_error(e: BaseException) -> bool:
    """True when ``e`` means the daemon went away or is not there: worth a reconnect."""
    lv = require_libvirt()
    if not isinstance(e, lv.libvirtError):
        return False
    code, dom = e.get_error_code(), e.get_error_domain()
    # Not VIR_ERR_NO_CONNECT: "no connection driver available" will never get better.
    if code in (lv.VIR_ERR_INVALID_CONN, lv.VIR_ERR_RPC, lv.VIR_ERR_OPERATION_TIMEOUT):
        return True
    # "Failed to connect socket …: No such file or directory / Connection refused",
    # "Cannot write data: Broken pipe", "End of file while reading data".
    return bool(code == lv.VIR_ERR_SYSTEM_ERROR and dom in (lv.VIR_FROM_RPC, lv.VIR_FROM_REMOTE))


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long to keep trying to connect, and how fast to back off."""

    initial: float = 0.2  # seconds before the first retry
    maximum: float = 2.0  # cap on one wait, before the jitter
    jitter: float = 0.2  # up to this much random extra per wait
    give_up_after: float | None = 3.0  # seconds; None: keep trying (the reconciler)


# A CLI run fails within a few seconds; the reconciler waits for the daemon forever.
CLI_BACKOFF = Backoff()
WATCH_BACKOFF = Backoff(initial=0.5, maximum=30.0, jitter=1.0, give_up_after=None)


def connect(uri: str = DEFAULT_URI, *, backoff: Backoff = CLI_BACKOFF,
            stop: threading.Event | None = None,
            on_retry: Callable[[int, str], None] | None = None) -> Any:
    """Open a read-write connection to ``uri``, retrying while the daemon is absent.

    ``stop`` ends the retrying early (the reconciler's shutdown); ``on_retry`` is told
    each failed attempt (number, one-line reason) so a daemon can log it.
    Raises LibvirtUnreachable when giving up, LibvirtFailure for non-transient errors.
    """
    lv = require_libvirt()
    _silence_default_handler()
    stops: list[tenacity.stop.stop_base] = []
    if backoff.give_up_after is not None:
        stops.append(tenacity.stop_after_delay(backoff.give_up_after))
    if stop is not None:
        stops.append(tenacity.stop_when_event_set(stop))

    def before_sleep(state: tenacity.RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            exc = state.outcome.exception()
            on_retry(state.attempt_number, one_line(exc) if exc else "?")

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_connection_error),
        # Not wait_exponential_jitter: its first argument is 'initial' in tenacity 8
        # (Debian 12) and 'multiplier' in 9, which deprecates 'initial'.
        wait=(tenacity.wait_exponential(multiplier=backoff.initial, max=backoff.maximum)
              + tenacity.wait_random(0, backoff.jitter)),
        stop=tenacity.stop_any(*stops) if stops else tenacity.stop_never,
        sleep=_interruptible_sleep(stop),
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        return retrying(lv.open, uri)
    except lv.libvirtError as e:
        if is_connection_error(e):
            raise LibvirtUnreachable(f"cannot reach libvirt at {uri}: {one_line(e)}") from None
        raise LibvirtFailure(f"cannot open {uri}: {one_line(e)}") from None


def _interruptible_sleep(stop: threading.Event | None) -> Callable[[float], None]:
    """tenacity's sleep; with ``stop``, a shutdown cuts a long backoff short."""
    if stop is None:
        import time

        return time.sleep

    def sleep(seconds: float) -> None:
        stop.wait(seconds)

    return sleep


def lookup(conn: Any, name: str) -> Any:
    """A domain by name, UUID or id; InputError naming it when it is not defined."""
    lv = require_libvirt()
    for finder in (conn.lookupByName, conn.lookupByUUIDString):
        try:
            return finder(name)
        except lv.libvirtError as e:
            if e.get_error_code() in (lv.VIR_ERR_NO_DOMAIN, lv.VIR_ERR_INVALID_ARG):
                continue
            raise wrap(e, f"looking up domain {name!r}") from None
    if name.isdigit():
        try:
            return conn.lookupByID(int(name))
        except lv.libvirtError:
            pass
    raise InputError(f"domain {name!r} is not defined on {conn.getURI()}")


def wrap(e: BaseException, doing: str) -> MemlockGuardError:
    """The one-line error for a libvirt failure while ``doing`` something."""
    if is_connection_error(e):
        return LibvirtUnreachable(f"lost libvirt while {doing}: {one_line(e)}")
    lv = require_libvirt()
    if isinstance(e, lv.libvirtError) and e.get_error_code() == lv.VIR_ERR_NO_DOMAIN:
        return DomainGone(f"the domain disappeared while {doing}")
    return LibvirtFailure(f"libvirt failed while {doing}: {one_line(e)}")


def persistent_xml(dom: Any) -> str:
    """The persistent (inactive) definition, secrets included: what defineXML takes back."""
    try:
        return str(dom.XMLDesc(XML_INACTIVE_SECURE))
    except require_libvirt().libvirtError as e:
        raise wrap(e, f"reading the definition of {dom.name()}") from None


def live_xml(dom: Any) -> str:
    try:
        return str(dom.XMLDesc(XML_LIVE_SECURE))
    except require_libvirt().libvirtError as e:
        raise wrap(e, f"reading the live XML of {dom.name()}") from None


def is_persistent(dom: Any) -> bool:
    try:
        return bool(dom.isPersistent())
    except require_libvirt().libvirtError as e:
        raise wrap(e, "asking whether a domain is persistent") from None


def is_active(dom: Any) -> bool:
    try:
        return bool(dom.isActive())
    except require_libvirt().libvirtError as e:
        raise wrap(e, "asking whether a domain runs") from None


def all_domains(conn: Any, *, persistent_only: bool = False) -> list[Any]:
    lv = require_libvirt()
    flags = lv.VIR_CONNECT_LIST_DOMAINS_PERSISTENT if persistent_only else 0
    try:
        return sorted(conn.listAllDomains(flags), key=lambda d: d.name())
    except lv.libvirtError as e:
        raise wrap(e, "listing domains") from None


def define(conn: Any, xml: str) -> Any:
    try:
        return conn.defineXML(xml)
    except require_libvirt().libvirtError as e:
        raise wrap(e, "redefining the domain") from None


def daemon_version(conn: Any) -> tuple[int, int, int] | None:
    """The libvirt version of the daemon (not of this client library): its rules apply."""
    try:
        v = int(conn.getLibVersion())
    except Exception:  # a driver without the call: fall back to the host's probe
        return None
    return v // 1_000_000, (v // 1000) % 1000, v % 1000


# -- hotplug (attach-device, detach-device) --------------------------------------------

def affect_flags(*, live: bool, config: bool) -> int:
    """VIR_DOMAIN_AFFECT_LIVE / _CONFIG for the definitions a change touches."""
    lv = require_libvirt()
    return (lv.VIR_DOMAIN_AFFECT_LIVE if live else 0) | \
        (lv.VIR_DOMAIN_AFFECT_CONFIG if config else 0)


def set_memtune(dom: Any, *, hard_limit: int | None, live: bool,
                swap_hard_limit: int | None = None, set_swap: bool = False) -> None:
    """Set the live (``live``) or persistent hard_limit, bytes; None puts back "not set".
    With ``set_swap``, swap_hard_limit too (None: not set); else it is left alone.

    One definition per call: libvirt-python refuses LIVE|CONFIG together (it asks
    virDomainGetMemoryParameters for the types first, which takes one). Given together,
    libvirt orders hard_limit and swap_hard_limit itself so that hard <= swap holds at
    every step (virDomainCgroupSetMemoryLimitParameters). The live call writes the
    memory cgroup and the live XML; QEMU's RLIMIT_MEMLOCK follows at the next hotplug,
    when qemuDomainAdjustMaxMemLock applies the live hard_limit.
    """
    from ..baselines.libvirt import LIBVIRT_UNLIMITED

    lv = require_libvirt()

    def kib(value: int | None) -> int:
        return LIBVIRT_UNLIMITED if value is None else -(-value // 1024)

    params = {lv.VIR_DOMAIN_MEMORY_HARD_LIMIT: kib(hard_limit)}
    if set_swap:
        params[lv.VIR_DOMAIN_MEMORY_SWAP_HARD_LIMIT] = kib(swap_hard_limit)
    which = "live" if live else "persistent"
    try:
        dom.setMemoryParameters(params, affect_flags(live=live, config=not live))
    except lv.libvirtError as e:
        raise wrap(e, f"setting the {which} hard_limit of {dom.name()}") from None


def set_metadata_element(dom: Any, element_xml: str | None, *, prefix: str, namespace: str,
                         live: bool) -> None:
    """Put (or with None, remove) the ``<metadata>`` child in ``namespace``."""
    lv = require_libvirt()
    which = "live" if live else "persistent"
    try:
        dom.setMetadata(lv.VIR_DOMAIN_METADATA_ELEMENT, element_xml,
                        prefix if element_xml is not None else None, namespace,
                        affect_flags(live=live, config=not live))
    except lv.libvirtError as e:
        raise wrap(e, f"setting the {which} metadata of {dom.name()}") from None


def attach_device(dom: Any, xml: str, *, live: bool, config: bool) -> None:
    """virDomainAttachDeviceFlags; libvirt's own error, on one line, when it fails."""
    lv = require_libvirt()
    try:
        dom.attachDeviceFlags(xml, affect_flags(live=live, config=config))
    except lv.libvirtError as e:
        raise wrap(e, f"attaching the device to {dom.name()}") from None


def detach_device(dom: Any, xml: str, *, live: bool, config: bool) -> None:
    lv = require_libvirt()
    try:
        dom.detachDeviceFlags(xml, affect_flags(live=live, config=config))
    except lv.libvirtError as e:
        raise wrap(e, f"detaching the device from {dom.name()}") from None
