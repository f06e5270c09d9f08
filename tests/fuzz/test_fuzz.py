"""Bounded atheris runs of both fuzz targets, and every saved crasher replayed.

The fuzzers run for MEMLOCK_GUARD_FUZZ_SECONDS in all (default: 60 under CI=true, 10
elsewhere; 0 skips them), split between the targets, each in a subprocess. A crash or
a slow input makes libFuzzer write the input into tests/fuzz/regressions/<target>/ and
the test fails naming it: commit that file, fix the bug, and from then on the replay
tests below run it on every test run.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from .targets import REGRESSIONS, SEEDS, HookHarness, fuzz_seconds, parser_target

HERE = Path(__file__).resolve().parent
TARGETS = ("parser", "hook")


def _saved(target: str) -> list[Path]:
    d = REGRESSIONS / target
    return sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith("."))


def test_seeds_and_saved_crashers_replay_through_the_parser_target() -> None:
    inputs = sorted(SEEDS.iterdir()) + _saved("parser")
    assert inputs
    for p in inputs:
        parser_target(p.read_bytes())


def test_seeds_and_saved_crashers_replay_through_the_hook_target() -> None:
    harness = HookHarness()
    try:
        for p in sorted(SEEDS.iterdir()) + _saved("hook"):
            data = p.read_bytes()
            harness(data)
            harness(data + b" ")  # the other on-error policy
    finally:
        harness.close()


def test_the_targets_catch_what_they_should() -> None:
    """A target that cannot fail finds nothing: check the assertions bite."""
    harness = HookHarness()
    try:
        from memlock_guard.hook import entry as hook

        real = hook.run
        hook.run = lambda *a, **k: 3  # type: ignore[assignment]
        try:
            with pytest.raises(AssertionError):
                harness(b"<domain/>")
        finally:
            hook.run = real
    finally:
        harness.close()


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_for_a_bounded_time(target: str, tmp_path: Path,
                                 record_property: pytest.RecordProperty) -> None:
    total = fuzz_seconds()
    if total <= 0:
        pytest.skip("MEMLOCK_GUARD_FUZZ_SECONDS=0")
    seconds = max(1, total // len(TARGETS))
    artifacts = REGRESSIONS / target
    before = set(_saved(target))
    corpus = tmp_path / "corpus"  # libFuzzer adds what it learns to the first directory
    corpus.mkdir()
    p = subprocess.run(
        [sys.executable, str(HERE / f"fuzz_{target}.py"),
         f"-max_total_time={seconds}", "-timeout=10", "-rss_limit_mb=2048",
         "-max_len=16384", f"-dict={HERE / 'domain.dict'}", "-print_final_stats=1",
         f"-artifact_prefix={artifacts}/", str(corpus), str(SEEDS)],
        capture_output=True, text=True, timeout=seconds * 3 + 120)
    log = p.stderr
    runs = re.search(r"Done (\d+) runs in (\d+) second", log)
    rate = re.findall(r"exec/s: (\d+)", log)
    found = sorted(set(_saved(target)) - before)
    if runs:
        record_property(f"fuzz_{target}_runs", runs.group(1))
    if rate:
        record_property(f"fuzz_{target}_exec_per_s", rate[-1])
    print(f"fuzz {target}: {runs.group(0) if runs else '?'}, "
          f"exec/s {rate[-1] if rate else '?'}, new crashers {len(found)}")
    assert not found, (f"fuzz_{target} found {len(found)} crasher(s), saved as "
                       f"{', '.join(str(f.relative_to(HERE.parent.parent)) for f in found)}:\n"
                       + log[-3000:])
    assert p.returncode == 0 and runs, f"fuzzer did not finish cleanly:\n{log[-3000:]}"
