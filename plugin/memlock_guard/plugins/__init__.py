"""What a plugin author imports: ``from memlock_guard.plugins import hookimpl, Exposure``.

- spec.py: the hook specifications, with what each hook must return;
- manager.py: the pluggy manager, built-ins always, third-party plugins by allow-list.

A plugin reports, for one domain, the regions QEMU's VFIO listener will map
(``Exposure``: bytes, ``Backing``, ``Kind``, and a boot ``Window`` for regions mapped
only for a while) and the containers that pin them. It reads the domain from
``Domain`` and the machine from ``HostFacts``, never from the file system. See
docs/plugins.md for a complete example and how to package and allow one.
"""

from ..accounting.ledger import Backing, Exposure, Kind, Window
from ..domain import Domain
from ..host.facts import HostFacts
from .spec import ENTRY_POINT_GROUP, hookimpl

__all__ = ["ENTRY_POINT_GROUP", "Backing", "Domain", "Exposure", "HostFacts", "Kind",
           "Window", "hookimpl"]
