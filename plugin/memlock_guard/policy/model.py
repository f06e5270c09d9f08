"""The policy as data: the ``Policy`` record, its enums, and where the host file is.

Light on purpose (no lxml): the hook, the reconciler and the CLI hold a ``Policy``; only
load.py reads one from XML.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NamedTuple

from ..accounting.modes import Mode
from ..support.defaults import AUDIT_LOG, DEFAULT_MARGIN, POLICY_ENV_VAR, POLICY_PATH
from ..support.errors import InputError

if TYPE_CHECKING:
    from ..accounting.report import Settings

ADJUSTABLE_OPS = ("migrate", "restore")
# <hotplug-reserve><vfio-devices>N: each device is a whole copy of guest memory behind a
# vIOMMU; more than this is a typo, not a plan (and QEMU's intel-iommu has 256 devfns
# per bus to give).
MAX_RESERVE_VFIO_DEVICES = 256
# Settable only in the host file: whoever can edit a domain must not load code into a
# root process, switch off the fail-safe or hide the audit trail.
HOST_ONLY = ("on-error", "plugins", "audit-log", "kubevirt-version", "kubevirt-overhead-ratio")


class PolicyError(InputError):
    """A policy that cannot be used, with the fail-safe settings still legible in it.

    A broken file must still be able to say ``<on-error>refuse</on-error>`` (the
    operator asked to fail closed) and where the audit log is, so those two are read
    from the raw bytes when the document as a whole cannot be.
    """

    def __init__(self, message: str, *, on_error: OnError | None = None,
                 audit_log: str | None = None) -> None:
        super().__init__(message)
        self.on_error = on_error
        self.audit_log = audit_log


class OnShortfall(StrEnum):
    REFUSE = "refuse"
    WARN = "warn"


class OnError(StrEnum):
    ALLOW = "allow"
    REFUSE = "refuse"


class Policy(NamedTuple):
    mode: Mode = Mode.AUTO
    on_shortfall: OnShortfall = OnShortfall.REFUSE
    adjust: frozenset[str] = frozenset(ADJUSTABLE_OPS)
    margin: int = DEFAULT_MARGIN
    zero_page_allowance: int | None = 0  # None: forgive every zero-fill page
    on_error: OnError = OnError.ALLOW
    plugins: tuple[str, ...] = ()
    audit_log: str = AUDIT_LOG
    # The cluster's KubeVirt, for the sidecar (after $MEMLOCK_GUARD_KUBEVIRT_VERSION and
    # $MEMLOCK_GUARD_KUBEVIRT_OVERHEAD_RATIO) and for --platform kubevirt; None: not said.
    # Host-only like on-error: facts about the cluster, not a domain's wish.
    kubevirt_version: str | None = None
    kubevirt_overhead_ratio: str | None = None
    # <hotplug-reserve><vfio-devices>: apply/watch leave room for this many more VFIO
    # devices behind a vIOMMU in the hard_limit they write.
    reserve_vfio_devices: int = 0
    # Where the values came from, for messages and the audit log.
    origin: str = "built-in defaults"
    # Elements a domain's <metadata> overrode, in document order.
    overridden: tuple[str, ...] = ()

    def may_adjust(self, op: str) -> bool:
        return op in self.adjust


DEFAULTS = Policy()


def policy_path(explicit: str | None = None,
                environ: Mapping[str, str] | None = None) -> tuple[str, bool]:
    """(path, named): ``--policy``, else ``$MEMLOCK_GUARD_POLICY``, else the default.

    ``named`` is True when someone chose the path; a missing named file is an error,
    while a missing default file means the built-in defaults.
    """
    if explicit:
        return explicit, True
    env = (os.environ if environ is None else environ).get(POLICY_ENV_VAR)
    if env:
        return env, True
    return POLICY_PATH, False


def to_settings(p: Policy, *, libvirt_version: tuple[int, int, int] | None = None,
                platform: str = "libvirt") -> Settings:
    """The accounting numbers of a policy, as report.assess() takes them."""
    from ..accounting.report import Settings

    s = Settings(mode=p.mode, margin=p.margin, zero_page_allowance=p.zero_page_allowance,
                 libvirt_version=libvirt_version, platform=platform,
                 kubevirt_overhead_ratio=p.kubevirt_overhead_ratio,
                 reserve_vfio_devices=p.reserve_vfio_devices)
    return s._replace(kubevirt_version=p.kubevirt_version) if p.kubevirt_version else s


def plugin_manager(p: Policy) -> Any:
    """The pluggy manager for this policy: built-ins plus the allowed third-party plugins;
    None when it allows none (the engine then calls the built-ins directly).

    Typed loosely so importing this module never imports pluggy.
    """
    if not p.plugins:
        return None
    from ..plugins import manager as plugins

    return plugins.manager(p.plugins)
