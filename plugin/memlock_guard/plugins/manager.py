"""The plugin manager: built-ins always, third-party plugins only by name.

We run as root: importing whatever happens to be installed under our entry-point
group would let any pip package run code in libvirt's start path. So only the names
the operator allowed are loaded, and the rest are ignored, not even imported.
"""

from __future__ import annotations

from collections.abc import Iterable

import pluggy

from ..accounting.engine import BUILTIN_MODULES
from ..support.errors import PluginError
from . import spec as hookspecs


def manager(allowed: Iterable[str] = ()) -> pluggy.PluginManager:
    """A manager with every built-in estimator and the allowed third-party plugins."""
    import importlib

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in BUILTIN_MODULES:
        pm.register(importlib.import_module(name), name=name)
    allowed = tuple(allowed)
    if allowed:
        _load_allowed(pm, allowed)
    return pm


def _load_allowed(pm: pluggy.PluginManager, allowed: tuple[str, ...]) -> None:
    from importlib.metadata import entry_points

    found = {ep.name: ep for ep in entry_points(group=hookspecs.ENTRY_POINT_GROUP)}
    for name in allowed:
        ep = found.get(name)
        if ep is None:
            raise PluginError(f"allowed plugin {name!r} is not installed "
                              f"(no entry point in group {hookspecs.ENTRY_POINT_GROUP!r})")
        try:
            plugin = ep.load()
        except Exception as e:
            raise PluginError(f"plugin {name!r} failed to load: {type(e).__name__}: {e}")\
                from None
        pm.register(plugin, name=f"third-party:{name}")
