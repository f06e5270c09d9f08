"""The fuzz targets, as plain functions: atheris drives them (fuzz_*.py), and
tests/fuzz/test_fuzz.py replays every saved crasher through them.

A target returns normally for every input the code under test handles as designed,
and raises (AssertionError or whatever escaped) for a bug.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REGRESSIONS = HERE / "regressions"
SEEDS = HERE / "seeds"
NS = "urn:memlock-guard:policy:1"


def parser_target(data: bytes) -> None:
    """Arbitrary bytes as a domain XML: parse, judge, render. Only InputError may escape
    the parser, and a judged domain must render as text and as JSON."""
    from memlock_guard.accounting.report import assess
    from memlock_guard.commands import render
    from memlock_guard.domain import parse_domain
    from memlock_guard.support.errors import InputError

    try:
        domain = parse_domain(data)
    except InputError as e:
        msg = str(e)
        assert msg and "\n" not in msg, f"not one line: {msg!r}"
        return
    report = assess(domain, _host())
    render.to_text(report)
    json.loads(render.to_json(report))


class HookHarness:
    """hook.run with a policy of each on-error value, pinned host facts, a scratch audit
    log. The whole input is the hook's stdin (so a domain XML seed is a valid input);
    the parity of its length picks the policy."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mg-fuzz-hook-"))
        self.audit = self.dir / "audit.jsonl"
        self.facts = self.dir / "facts.json"
        from tests.conftest import PINNED_HOST

        self.facts.write_text(json.dumps(PINNED_HOST))
        self.policies = {}
        for on_error in ("allow", "refuse"):
            p = self.dir / f"{on_error}.xml"
            p.write_text(f"<policy xmlns='{NS}'><on-error>{on_error}</on-error>"
                         f"<audit-log>{self.audit}</audit-log></policy>")
            self.policies[on_error] = p
        self.runs = 0

    def __call__(self, data: bytes) -> None:
        from memlock_guard.hook import entry as hook

        on_error = "refuse" if len(data) % 2 else "allow"
        out, err = io.StringIO(), io.StringIO()
        rc = hook.run(["fuzz", "prepare", "begin", "-"], stdin=io.BytesIO(data),
                      stdout=out, stderr=err, policy_path=str(self.policies[on_error]),
                      facts_path=str(self.facts), deadline=0, use_syslog=False)
        text = err.getvalue()
        assert rc in (0, 1), rc
        assert out.getvalue() == "", "prepare begin must never print XML"
        assert "Traceback" not in text
        assert text.count("\n") <= 1, f"more than one line on stderr: {text!r}"
        failed = "could not check" in text
        if rc == 1:  # refused: a short verdict, or a failure under on-error refuse
            assert "refused the start" in text or (failed and on_error == "refuse"), text
        elif failed:
            assert on_error == "allow", text
        self.runs += 1
        if self.runs % 5000 == 0:
            self.audit.unlink(missing_ok=True)  # keep the scratch log small

    def close(self) -> None:
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)


_HOST = None


def _host():  # type: ignore[no-untyped-def]
    global _HOST
    if _HOST is None:
        from memlock_guard.host import probe as host

        from tests.conftest import PINNED_HOST

        _HOST = host.collect(override=PINNED_HOST)
    return _HOST


def fuzz_seconds() -> int:
    """Total fuzzing time for the test command: MEMLOCK_GUARD_FUZZ_SECONDS, else 60 under
    CI (CI=true) and 10 elsewhere."""
    raw = os.environ.get("MEMLOCK_GUARD_FUZZ_SECONDS")
    if raw:
        return max(0, int(raw))
    ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    return 60 if ci else 10
