"""Third-party estimator plugins that raise or return nonsense are excluded, and say why.

Each plugin is registered the way plugins._load_allowed registers an allowed entry
point (name ``third-party:NAME``). An excluded plugin contributes nothing, not even the
part of its answer that looked fine, and the ledger is then exactly the built-ins'.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Iterator
from typing import Any

import pluggy
import pytest
from memlock_guard.accounting.engine import MAX_ITEMS, build_ledger
from memlock_guard.accounting.ledger import Backing, Exposure, Kind
from memlock_guard.accounting.modes import Mode
from memlock_guard.accounting.report import assess
from memlock_guard.commands import render
from memlock_guard.domain import Domain, parse_domain
from memlock_guard.host.facts import HostFacts
from memlock_guard.plugins import manager as plugins
from memlock_guard.plugins.spec import hookimpl

from .hostile_cases import domain, hostdevs

GOOD = Exposure("plugin RAM", 1 << 20, Backing.ANON, readonly=False, kind=Kind.OTHER)


@pytest.fixture
def dom() -> Domain:
    return parse_domain(domain(hostdevs(2) + "<iommu model='intel'/>").encode())


def _pm(*plugins_: object) -> pluggy.PluginManager:
    pm = plugins.manager()
    for i, p in enumerate(plugins_):
        pm.register(p, name=f"third-party:p{i}")
    return pm


def _exposures(fn: Any) -> object:
    class P:
        @hookimpl
        def memlock_guard_exposures(self, domain: Domain, host: HostFacts) -> Any:
            return fn()
    return P()


def _reasons(fn: Any) -> object:
    class P:
        @hookimpl
        def memlock_guard_container_reasons(self, domain: Domain, host: HostFacts) -> Any:
            return fn()
    return P()


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no")


class Sneaky(Exposure):  # a subclass could lie about its fields between reads
    __slots__ = ()


def _raise(e: BaseException) -> Any:
    raise e


def _forever() -> Iterator[Exposure]:
    return itertools.repeat(GOOD)


BAD_EXPOSURES = {
    "raises": (lambda: _raise(RuntimeError("boom")), "raised RuntimeError: boom"),
    "sys.exit(0)": (lambda: _raise(SystemExit(0)), "raised SystemExit"),
    "unprintable exception": (lambda: _raise(Unprintable()), "(unprintable)"),
    "raises mid-generator": (lambda: (x for x in [GOOD, 1 // 0]), "ZeroDivisionError"),
    "negative bytes": (lambda: [Exposure("x", -1, Backing.ANON, False, Kind.OTHER)],
                       "nonsense bytes -1"),
    "bytes beyond 2**63": (lambda: [Exposure("x", 1 << 70, Backing.ANON, False, Kind.OTHER)],
                           "nonsense bytes"),
    "bool bytes": (lambda: [Exposure("x", True, Backing.ANON, False, Kind.OTHER)],  # type: ignore[arg-type]
                   "nonsense bytes True"),
    "float bytes": (lambda: [Exposure("x", 1.5, Backing.ANON, False, Kind.OTHER)],  # type: ignore[arg-type]
                    "nonsense bytes 1.5"),
    "string backing": (lambda: [Exposure("x", 1, "anon", False, Kind.OTHER)],  # type: ignore[arg-type]
                       "invalid backing"),
    "not an Exposure": (lambda: [{"source": "x", "bytes": 1}], "returned dict"),
    "an Exposure subclass": (lambda: [Sneaky("x", 1, Backing.ANON, False, Kind.OTHER)],
                             "returned Sneaky"),
    "a bare string": (lambda: "guest RAM", "returned a str"),
    "an int": (lambda: 42, "raised TypeError"),
    "an endless generator": (_forever, f"more than {MAX_ITEMS} items"),
    "negative containers": (lambda: [Exposure("x", 1, Backing.ANON, False, Kind.OTHER,
                                              containers=-2)], "nonsense containers"),
    "a multi-line source": (lambda: [Exposure("a\nb", 1, Backing.ANON, False, Kind.OTHER)],
                            "printable line"),
    "a 1 MB source": (lambda: [Exposure("x" * 10**6, 1, Backing.ANON, False, Kind.OTHER)],
                      "printable line"),
    "a mapping no measurement can join": (
        lambda: [Exposure("x", 1, Backing.ANON, False, Kind.OTHER, mapping="net 0/bar6")],
        "invalid mapping"),
    "a mapping that is not a string": (
        lambda: [Exposure("x", 1, Backing.ANON, False, Kind.OTHER, mapping=6)],  # type: ignore[arg-type]
        "invalid mapping"),
}


@pytest.mark.parametrize("case", BAD_EXPOSURES, ids=list(BAD_EXPOSURES))
def test_a_misbehaving_plugin_is_excluded(case: str, dom: Domain, pinned_host: HostFacts) -> None:
    fn, why = BAD_EXPOSURES[case]
    baseline = build_ledger(dom, pinned_host, plugins.manager())
    t = time.monotonic()
    ledger = build_ledger(dom, pinned_host, _pm(_exposures(fn)))
    assert time.monotonic() - t < 5
    assert len(ledger.excluded_plugins) == 1
    assert ledger.excluded_plugins[0].startswith("third-party:p0: ")
    assert why in ledger.excluded_plugins[0]
    assert "\n" not in ledger.excluded_plugins[0]
    assert ledger.items == baseline.items
    assert ledger.containers == baseline.containers


@pytest.mark.parametrize(("fn", "why"), [
    (lambda: "VFIO extra", "returned a str"),  # would have been 10 containers
    (lambda: [1, 2], "of type int"),
    (lambda: ["x\ny"], "printable line"),
    (lambda: _raise(ValueError("nope")), "raised ValueError: nope"),
])
def test_container_reasons_must_be_a_list_of_short_strings(
        fn: Any, why: str, dom: Domain, pinned_host: HostFacts) -> None:
    ledger = build_ledger(dom, pinned_host, _pm(_reasons(fn)))
    assert ledger.containers == 2  # the two vIOMMU hostdevs, nothing from the plugin
    assert why in ledger.excluded_plugins[0]


def test_an_excluded_plugin_loses_the_containers_it_already_added(
        dom: Domain, pinned_host: HostFacts) -> None:
    class Half:
        @hookimpl
        def memlock_guard_container_reasons(self, domain: Domain, host: HostFacts) -> Any:
            return ["my own container"]

        @hookimpl
        def memlock_guard_exposures(self, domain: Domain, host: HostFacts) -> Any:
            return [Exposure("x", -5, Backing.ANON, False, Kind.OTHER)]

    ledger = build_ledger(dom, pinned_host, _pm(Half()))
    assert ledger.containers == 2
    assert "my own container" not in ledger.container_reasons
    assert len(ledger.excluded_plugins) == 1


def test_a_hook_wrapper_is_not_called(dom: Domain, pinned_host: HostFacts) -> None:
    called = []

    class Wrapper:
        @hookimpl(hookwrapper=True)
        def memlock_guard_exposures(self, domain: Domain, host: HostFacts) -> Any:
            called.append(1)
            yield

    ledger = build_ledger(dom, pinned_host, _pm(Wrapper()))
    assert not called
    assert "hook wrappers are not supported" in ledger.excluded_plugins[0]


def test_a_good_plugin_is_counted_in_every_container(
        dom: Domain, pinned_host: HostFacts) -> None:
    baseline = build_ledger(dom, pinned_host, plugins.manager())
    ledger = build_ledger(dom, pinned_host,
                          _pm(_exposures(lambda: [GOOD]), _reasons(lambda: ["extra"])))
    assert ledger.excluded_plugins == ()
    assert ledger.containers == baseline.containers + 1
    assert ledger.required(Mode.STRICT) == (
        baseline.required(Mode.STRICT) // baseline.containers * ledger.containers
        + GOOD.bytes * ledger.containers)


def test_one_bad_plugin_does_not_exclude_a_good_one(
        dom: Domain, pinned_host: HostFacts) -> None:
    ledger = build_ledger(dom, pinned_host, _pm(_exposures(lambda: _raise(OSError("x"))),
                                                _exposures(lambda: [GOOD])))
    assert [e.split(":")[1] for e in ledger.excluded_plugins] == ["p0"]
    assert any(i.source == GOOD.source for i in ledger.items)


def test_exclusions_reach_both_reports(dom: Domain, pinned_host: HostFacts) -> None:
    r = assess(dom, pinned_host, pm=_pm(_exposures(lambda: _raise(RuntimeError("boom")))))
    assert render.to_dict(r)["excluded_plugins"] == list(r.ledger.excluded_plugins)
    assert "excluded   third-party:p0: raised RuntimeError: boom" in render.to_text(r)


def test_builtin_estimator_bugs_still_surface(dom: Domain, pinned_host: HostFacts) -> None:
    """Built-ins are trusted: a broken one is our bug and must not be hidden."""
    pm = plugins.manager()
    pm.unregister(name="memlock_guard.estimators.ram")

    class BrokenRam:
        @hookimpl
        def memlock_guard_exposures(self, domain: Domain, host: HostFacts) -> Any:
            return [Exposure("x", -1, Backing.ANON, False, Kind.RAM)]

    pm.register(BrokenRam(), name="memlock_guard.estimators.ram")
    with pytest.raises(AssertionError, match="built-in estimator"):
        build_ledger(dom, pinned_host, pm)


def test_sys_exit_in_a_plugin_does_not_end_the_process(
        dom: Domain, pinned_host: HostFacts) -> None:
    ledger = build_ledger(dom, pinned_host, _pm(_exposures(lambda: sys.exit(0))))
    assert "SystemExit" in ledger.excluded_plugins[0]
