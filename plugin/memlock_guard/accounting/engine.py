"""The accounting engine: Domain + HostFacts -> Ledger, through the estimator plugins.

Built-in estimators are trusted (a bug there is ours and should surface). A
third-party plugin is called on its own, and is left out of the ledger, with the
reason recorded, when it raises or returns anything but well-formed exposures.

Without a plugin manager (no third-party plugin allowed, the usual case) the built-in
estimators are called directly, in registration order: the same functions pluggy would
call, with the same result (tests/unit/test_engine_paths.py compares the two over the
corpus), minus the manager, which costs the hook about 1 ms a start to build.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import pluggy

from ..domain import Domain
from ..host.facts import HostFacts
from ..support.units import MAX_BYTES
from .backend import backend_of
from .ledger import Backing, Exposure, Kind, Ledger, LedgerItem, Window, valid_mapping

# The built-in estimators, in registration order (the ledger lists their items in this
# order). Named, not imported: the engine calls them directly when no third-party plugin
# is allowed, and plugins/manager.py registers them with pluggy otherwise.
BUILTIN_MODULES = (
    "memlock_guard.estimators.containers",
    "memlock_guard.estimators.ram",
    "memlock_guard.estimators.firmware",
    "memlock_guard.estimators.video",
    "memlock_guard.estimators.option_roms",
)


_BUILTIN = frozenset(BUILTIN_MODULES)


def is_builtin(plugin_name: str | None) -> bool:
    return plugin_name in _BUILTIN


def build_ledger(domain: Domain, host: HostFacts,
                 pm: pluggy.PluginManager | None = None) -> Ledger:
    """The ledger of ``domain``; ``pm`` None: the built-in estimators alone."""
    if pm is None:
        return _builtin_ledger(domain, host)
    excluded: dict[str, str] = {}  # plugin name -> why; the first reason is kept
    reasons: list[tuple[str, str]] = []
    for name, got in _call_each(pm, "memlock_guard_container_reasons", domain, host,
                                excluded):
        bad = _invalid_reasons(got, third_party=not is_builtin(name))
        if bad:
            _reject(name, bad, excluded)
            continue
        reasons += [(name, r) for r in got]
    exposures: list[tuple[str, Exposure]] = []
    for name, got in _call_each(pm, "memlock_guard_exposures", domain, host, excluded):
        bad = _invalid(got, third_party=not is_builtin(name))
        if bad:
            _reject(name, bad, excluded)
            continue
        exposures += [(name, e) for e in got]
    # An excluded plugin contributes nothing, not even what it returned before it
    # misbehaved: its containers without its exposures would be half a story.
    if excluded:
        kept_reasons = tuple(r for name, r in reasons if name not in excluded)
        kept = [e for name, e in exposures if name not in excluded]
    else:  # the usual case: nothing to filter
        kept_reasons = tuple(r for _, r in reasons)
        kept = [e for _, e in exposures]
    return _ledger(kept_reasons, kept,
                   tuple(f"{name}: {why}" for name, why in excluded.items()), domain)


Estimator = Callable[[Domain, HostFacts], Iterable[Any]]
_BUILTINS: tuple[tuple[Estimator, ...], tuple[Estimator, ...]] | None = None


def _builtin_estimators() -> tuple[tuple[Estimator, ...], tuple[Estimator, ...]]:
    """(container-reason hooks, exposure hooks) of the built-in plugins, in order."""
    global _BUILTINS
    if _BUILTINS is None:
        import importlib

        mods = [importlib.import_module(name) for name in BUILTIN_MODULES]
        _BUILTINS = (
            tuple(m.memlock_guard_container_reasons for m in mods
                  if hasattr(m, "memlock_guard_container_reasons")),
            tuple(m.memlock_guard_exposures for m in mods
                  if hasattr(m, "memlock_guard_exposures")),
        )
    return _BUILTINS


def _builtin_ledger(domain: Domain, host: HostFacts) -> Ledger:
    reason_hooks, exposure_hooks = _builtin_estimators()
    reasons: list[str] = []
    for fn in reason_hooks:
        reasons += fn(domain, host)
    exposures: list[Exposure] = []
    for fn in exposure_hooks:
        exposures += fn(domain, host)
    return _ledger(tuple(reasons), exposures, (), domain)


def _ledger(reasons: tuple[str, ...], exposures: list[Exposure],
            excluded: tuple[str, ...], domain: Domain) -> Ledger:
    n = len(reasons)
    items = tuple([
        LedgerItem(e.source, e.bytes, e.backing, e.readonly, e.kind, e.window, e.region,
                   n if e.containers is None else min(e.containers, n), e.note, e.mapping,
                   e.hotplug)
        for e in exposures])
    return Ledger(items, n, reasons, excluded, backend_of(domain))


# A real estimator returns a handful of items; more than this is a runaway generator,
# which must not eat the memory of a process that runs inside libvirtd's start path.
MAX_ITEMS = 10_000
MAX_SOURCE_CHARS = 200
MAX_NOTE_CHARS = 500


def _call_each(pm: pluggy.PluginManager, hook_name: str, domain: Domain, host: HostFacts,
               excluded: dict[str, str]) -> Iterator[tuple[str, list[Any]]]:
    # Registration order, so the ledger reads RAM, firmware, video, ROMs, then plugins.
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        name = impl.plugin_name
        if is_builtin(name):
            yield name, list(impl.function(domain=domain, host=host) or ())
            continue
        if name in excluded:
            continue
        if impl.hookwrapper or getattr(impl, "wrapper", False):
            excluded[name] = "hook wrappers are not supported"
            continue
        try:
            got = _collect(impl.function(domain=domain, host=host))
        # SystemExit too: a plugin calling sys.exit() must not end the hook with its
        # own exit status (0 would let the VM start with nothing decided).
        except (Exception, SystemExit) as e:
            excluded[name] = f"raised {type(e).__name__}: {_describe(e)}"
            continue
        if isinstance(got, str):
            excluded[name] = got
            continue
        yield name, got


def _collect(result: Any) -> list[Any] | str:
    """The items a plugin returned, run here inside the guard; a str says what is wrong."""
    if result is None:
        return []
    # An Exposure is a tuple too: one returned bare must not pass as a list of its fields.
    if isinstance(result, (str, bytes, bytearray, Mapping, Exposure)):
        return f"returned a {type(result).__name__}, not a list"
    if isinstance(result, (list, tuple)):
        got = list(result)
    else:
        got = list(itertools.islice(iter(result), MAX_ITEMS + 1))
    if len(got) > MAX_ITEMS:
        return f"returned more than {MAX_ITEMS} items"
    return got


def _reject(name: str, why: str, excluded: dict[str, str]) -> None:
    if is_builtin(name):
        raise AssertionError(f"built-in estimator {name}: {why}")  # our bug: surface it
    excluded.setdefault(name, why)


# Built-ins name devices by what the domain XML calls them (an alias, a MAC), so their
# text may be long or odd; the short-printable-line rule is for third-party plugins.

def _invalid_reasons(got: list[Any], *, third_party: bool) -> str | None:
    for r in got:
        if type(r) is not str:
            return f"returned a container reason of type {type(r).__name__}, not str"
        if third_party and (len(r) > MAX_SOURCE_CHARS or not r.isprintable()):
            return "returned a container reason that is not one short printable line"
    return None


def _invalid(got: list[Any], *, third_party: bool) -> str | None:
    # Exact types, not isinstance: a subclass could compute a field anew on every read
    # and so pass this check with one value and be charged with another.
    for e in got:
        if type(e) is not Exposure:
            return f"returned {type(e).__name__}, not Exposure"
        if type(e.source) is not str or not e.source:
            return "returned an exposure without a source"
        if third_party and (len(e.source) > MAX_SOURCE_CHARS or not e.source.isprintable()):
            return "returned an exposure whose source is not one short printable line"
        if type(e.bytes) is not int or not 0 <= e.bytes <= MAX_BYTES:
            return f"returned nonsense bytes {_short(e.bytes)} for {_short(e.source)}"
        if e.containers is not None and (type(e.containers) is not int or e.containers < 0):
            return f"returned nonsense containers {_short(e.containers)}"
        if type(e.backing) is not Backing or type(e.kind) is not Kind \
                or type(e.readonly) is not bool:
            return f"returned an exposure with an invalid backing, kind or readonly flag " \
                   f"for {_short(e.source)}"
        if e.window is not None and type(e.window) is not Window:
            return f"returned an invalid window {_short(e.window)}"
        if e.region is not None and (type(e.region) is not str
                                     or (third_party and len(e.region) > MAX_SOURCE_CHARS)):
            return f"returned an invalid region {_short(e.region)}"
        if e.note is not None and (type(e.note) is not str
                                   or (third_party and len(e.note) > MAX_NOTE_CHARS)):
            return f"returned an invalid note for {_short(e.source)}"
        if e.mapping is not None and (type(e.mapping) is not str
                                      or not valid_mapping(e.mapping)):
            return f"returned an invalid mapping for {_short(e.source)}"
        if type(e.hotplug) is not bool:
            return f"returned an invalid hotplug flag for {_short(e.source)}"
    return None


def _describe(e: BaseException) -> str:
    # str() runs the plugin's own __str__, which may raise too.
    try:
        text = str(e)
    except Exception:
        text = "(unprintable)"
    return _one_line(text, 200)


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return _one_line(text, 60)


def _one_line(text: str, limit: int) -> str:
    text = "".join(c if c.isprintable() else " " for c in text[: limit + 1])
    return text if len(text) <= limit else text[:limit] + "…"
