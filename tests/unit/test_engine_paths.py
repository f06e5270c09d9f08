"""The engine's two ways to run the built-in estimators must agree exactly.

Without third-party plugins the engine calls the built-ins directly; with a manager it
goes through pluggy, which also checks every exposure a built-in returns (a malformed
one is our bug and raises). Over the shipped examples and libvirt's test corpus, both
must give the same ledger, item for item and in the same order.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from memlock_guard.accounting import engine
from memlock_guard.accounting.ledger import Ledger
from memlock_guard.domain import parse_domain
from memlock_guard.host import probe as hostmod
from memlock_guard.plugins import manager as plugins
from memlock_guard.support.errors import InputError

from ..conftest import CORPUS, PINNED_HOST

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.xml"))
CORPUS_FILES = sorted(CORPUS.rglob("*.xml")) if CORPUS.is_dir() else []


@pytest.fixture(scope="module")
def host() -> hostmod.HostFacts:
    return hostmod.collect(override=PINNED_HOST)


def _both(path: Path, host: hostmod.HostFacts, pm: object) -> tuple[Ledger, Ledger] | None:
    try:
        domain = parse_domain(path.read_bytes())
    except InputError:
        return None
    return engine.build_ledger(domain, host), engine.build_ledger(domain, host, pm)  # type: ignore[arg-type]


def test_the_direct_path_calls_every_builtin_in_registration_order():
    reasons, exposures = engine._builtin_estimators()
    pm = plugins.manager()
    assert [f.__module__ for f in exposures] == [
        i.plugin_name for i in pm.hook.memlock_guard_exposures.get_hookimpls()]
    assert [f.__module__ for f in reasons] == [
        i.plugin_name for i in pm.hook.memlock_guard_container_reasons.get_hookimpls()]


def test_the_examples_give_the_same_ledger_either_way(host):
    pm = plugins.manager()
    assert EXAMPLES
    for path in EXAMPLES:
        got = _both(path, host, pm)
        assert got is not None, path
        direct, managed = got
        assert direct.items, path
        assert direct == managed, path


@pytest.mark.skipif(not CORPUS_FILES, reason=f"corpus not present at {CORPUS}")
def test_the_corpus_gives_the_same_ledger_either_way(host):
    pm = plugins.manager()
    compared = 0
    for path in CORPUS_FILES:
        got = _both(path, host, pm)
        if got is None:
            continue
        direct, managed = got
        assert direct == managed, path.name
        compared += 1
    assert compared > 2000
