"""The accounting engine: Domain + HostFacts -> Ledger, through the estimator plugins.

Built-in estimators are trusted (a bug there is ours and should surface). A
third-party plugin is called on its own, and is left out of the ledger, with the
reason recorded, when it raises or returns anything but well-formed exposures.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pluggy

from . import plugins
from .domain import Domain
from .host import HostFacts
from .ledger import Exposure, Ledger, LedgerItem

_DEFAULT_PM: pluggy.PluginManager | None = None


def default_manager() -> pluggy.PluginManager:
    global _DEFAULT_PM
    if _DEFAULT_PM is None:
        _DEFAULT_PM = plugins.manager()
    return _DEFAULT_PM


def build_ledger(domain: Domain, host: HostFacts,
                 pm: pluggy.PluginManager | None = None) -> Ledger:
    pm = pm or default_manager()
    excluded: list[str] = []
    reasons: list[str] = []
    for name, result in _call_each(pm, "memlock_guard_container_reasons", domain, host,
                                   excluded):
        got = list(result or ())
        if not all(isinstance(r, str) for r in got):
            _exclude(name, "container reasons must be strings", excluded)
            continue
        reasons += got
    exposures: list[Exposure] = []
    for name, result in _call_each(pm, "memlock_guard_exposures", domain, host, excluded):
        got = list(result or ())
        bad = _invalid(got)
        if bad and plugins.is_builtin(name):
            raise AssertionError(f"built-in estimator {name}: {bad}")
        if bad:
            _exclude(name, bad, excluded)
            continue
        exposures += got
    n = len(reasons)
    items = tuple(
        LedgerItem(e.source, e.bytes, e.backing, e.readonly, e.kind, e.window, e.region,
                   n if e.containers is None else min(e.containers, n), e.note)
        for e in exposures)
    return Ledger(items, n, tuple(reasons), tuple(excluded))


def _call_each(pm: pluggy.PluginManager, hook_name: str, domain: Domain, host: HostFacts,
               excluded: list[str]) -> Iterable[tuple[str, Any]]:
    skip = {e.split(":", 2)[1] for e in excluded if e.startswith("third-party:")}
    # Registration order, so the ledger reads RAM, firmware, video, ROMs, then plugins.
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        name = impl.plugin_name
        if plugins.is_builtin(name):
            yield name, impl.function(domain=domain, host=host)
            continue
        if name.split(":", 1)[-1] in skip:
            continue
        try:
            result = impl.function(domain=domain, host=host)
            if result is not None and not isinstance(result, (list, tuple)):
                result = list(result)  # run generators here, inside the guard
        except Exception as e:
            _exclude(name, f"raised {type(e).__name__}: {str(e)[:200]}", excluded)
            continue
        yield name, result


def _exclude(name: str, why: str, excluded: list[str]) -> None:
    excluded.append(f"{name}: {why}")


def _invalid(got: list[Any]) -> str | None:
    for e in got:
        if not isinstance(e, Exposure):
            return f"returned {type(e).__name__}, not Exposure"
        if not isinstance(e.bytes, int) or isinstance(e.bytes, bool) or e.bytes < 0:
            return f"returned nonsense bytes {e.bytes!r} for {e.source!r}"
        if e.containers is not None and (not isinstance(e.containers, int) or e.containers < 0):
            return f"returned nonsense containers {e.containers!r}"
    return None
