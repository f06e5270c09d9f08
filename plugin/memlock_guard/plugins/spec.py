"""The plugin interface: what an estimator plugin implements.

Built-in estimators (``memlock_guard.estimators``) are ordinary plugins registered
through these same hooks (see manager.py); a third-party plugin is loaded only when the
operator lists its entry-point name in the policy (``<plugins><allow>NAME</allow>
</plugins>``), because memlock-guard runs as root inside libvirt's VM start path.
docs/plugins.md is the guide for plugin authors; tests/unit/test_plugin_docs.py keeps it
in step with every hook specified here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from ..accounting.ledger import Exposure
    from ..domain import Domain
    from ..host.facts import HostFacts

PROJECT = "memlock_guard"
ENTRY_POINT_GROUP = "memlock_guard"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def memlock_guard_exposures(domain: Domain, host: HostFacts) -> Iterable[Exposure]:
    """Report what this plugin knows will be charged to QEMU's RLIMIT_MEMLOCK, per container.

    Usually: every region that QEMU's VFIO listener will map for ``domain`` and that no
    other plugin reports (RAM is mapped read-write, ROM read-only). Report bytes as one
    container sees them; the engine multiplies by the number of containers, unless
    ``containers`` is set (``containers=1``: pinned once, whatever the count). Split a
    ROM into its file-backed part (``Backing.FILE_ROM``) and its never-written tail
    (``Backing.ZERO_FILL``), because tolerant accounting forgives only the latter. A
    region mapped only during boot carries a ``window`` and a ``region``: within a
    window, regions are mapped one at a time and only the largest counts.

    Must be pure: read ``host`` for anything about the machine, never the file system.
    Return an empty iterable when the domain has nothing of yours. Raising, or returning
    anything but ``Exposure`` objects with non-negative ``bytes``, excludes a
    third-party plugin from the decision and reports it.
    """
    raise NotImplementedError


@hookspec
def memlock_guard_container_reasons(domain: Domain, host: HostFacts) -> Iterable[str]:
    """Name each VFIO container (or iommufd IOAS) that will pin the guest address space.

    Return one short reason per container, e.g. ``"vfio hostdev0 (own container:
    vIOMMU)"``. The engine counts every plugin's reasons; each container maps the
    whole address space, so every exposure is charged once per container.
    """
    raise NotImplementedError
