"""Wall time and peak RSS of every hostile input, each in a process of its own.

    .venv/bin/python bench/hostile_inputs.py [--only NAME ...]

Runs each case of tests/unit/hostile_cases.py through ``memlock-guard estimate`` and,
for the cases the hook sees, through the real ``hooks/qemu`` executable (``prepare
begin``, a stripped environment, on-error allow). Time and peak RSS are the child's own
(os.wait4's rusage, ru_maxrss), interpreter start-up included. Targets from the issue:
under 1 s and under 150 MB per case; they are printed as ratios (1.00 = at the target),
never asserted, so a slow CI machine does not fail the suite.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.unit.hostile_cases import CASES, Case, Ctx  # noqa: E402

TIME_TARGET = 1.0  # seconds
RSS_TARGET = 150 * 1024 * 1024  # bytes
NS = "urn:memlock-guard:policy:1"


@dataclass(frozen=True)
class Run:
    rc: int
    seconds: float
    rss: int  # bytes
    stderr: str


# Peak RSS must be the child's own. Linux carries the mm high-water mark across exec,
# and a fork (or vfork) child starts from its parent's: a child of this script, which
# holds the 50 MB inputs, would report this script's peak. So a tiny launcher (a bare
# interpreter, a few MB) spawns each run and reads its rusage with wait4.
LAUNCHER = r"""
import json, os, sys, time
argv, env = json.loads(sys.argv[1]), json.loads(sys.argv[2])
fi = os.open(sys.argv[3], os.O_RDONLY)
fe = os.open(sys.argv[4], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
fo = os.open(os.devnull, os.O_WRONLY)
t = time.perf_counter()
pid = os.posix_spawn(argv[0], argv, env, file_actions=[
    (os.POSIX_SPAWN_DUP2, fi, 0), (os.POSIX_SPAWN_DUP2, fo, 1), (os.POSIX_SPAWN_DUP2, fe, 2)])
_, status, ru = os.wait4(pid, 0)
print(json.dumps([os.waitstatus_to_exitcode(status), time.perf_counter() - t, ru.ru_maxrss]))
"""


def measure(argv: list[str], stdin: Path | None, env: dict[str, str] | None = None) -> Run:
    """One child: its exit status, wall time and peak RSS (its own, from wait4)."""
    with tempfile.NamedTemporaryFile() as ferr:
        out = subprocess.run(
            [sys.executable, "-I", "-S", "-c", LAUNCHER, json.dumps(argv),
             json.dumps(dict(os.environ) if env is None else env),
             str(stdin or os.devnull), ferr.name],
            capture_output=True, text=True, check=True, cwd="/").stdout
        rc, seconds, maxrss_kib = json.loads(out)
        err = Path(ferr.name).read_text(errors="replace").strip()
    return Run(rc, seconds, maxrss_kib * 1024, err)


def installed_hook(work: Path, policy: Path, facts: Path) -> Path:
    """hooks/qemu with the two settings install-hook writes."""
    src = (ROOT / "hooks" / "qemu").read_text()
    src = src.replace("POLICY: str | None = None", f"POLICY: str | None = {str(policy)!r}")
    src = src.replace('FACTS: str | None = "/var/lib/memlock-guard/host-facts.json"',
                      f"FACTS: str | None = {str(facts)!r}")
    p = work / "qemu"
    p.write_text(src)
    p.chmod(0o755)
    return p


def stdin_file(case: Case, ctx: Ctx) -> tuple[str, Path | None]:
    """(--xml argument, file to give as stdin) for the CLI."""
    inp = case.build(ctx)
    if inp.xml != "-":
        return inp.xml, None
    return "-", ctx.file(f"{case.name}.stdin", inp.stdin or b"")


def row(name: str, path: str, run: Run | None) -> str:
    if run is None:
        return f"{name:28s} {path:5s} {'-':>5s}"
    return (f"{name:28s} {path:5s} {run.rc:5d} {run.seconds:8.3f} {run.seconds / TIME_TARGET:6.2f}"
            f" {run.rss / 2**20:8.1f} {run.rss / RSS_TARGET:6.2f}  {run.stderr[:70]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", help="case names to run (default: all)")
    args = ap.parse_args()
    cases = [c for c in CASES if not args.only or c.name in args.only]
    py = sys.executable
    worst_t: tuple[float, str] = (0.0, "")
    worst_m: tuple[int, str] = (0, "")
    print(f"{'case':28s} {'path':5s} {'exit':>5s} {'seconds':>8s} {'/1s':>6s} "
          f"{'RSS MB':>8s} {'/150MB':>6s}  stderr")
    with tempfile.TemporaryDirectory(prefix="mg-bench-") as tmp:
        work = Path(tmp)
        hook_dir = work / "hook"
        hook_dir.mkdir()
        facts = Ctx(hook_dir).host_file
        policy = hook_dir / "policy.xml"
        policy.write_text(f"<policy xmlns='{NS}'><on-error>allow</on-error>"
                          f"<audit-log>{hook_dir / 'audit.jsonl'}</audit-log></policy>")
        hook = installed_hook(hook_dir, policy, facts)
        stripped = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
        baseline = ROOT / "examples" / "gpu-passthrough.xml"
        jobs: list[tuple[str, str, list[str], Path | None, dict[str, str] | None]] = [
            ("(baseline) gpu-passthrough", "cli",
             [py, "-m", "memlock_guard.cli", "estimate", "--xml", str(baseline),
              "--host-facts", str(facts)], None, None),
            ("(baseline) gpu-passthrough", "hook",
             [py, "-I", "-S", str(hook), "bench", "prepare", "begin", "-"], baseline, stripped),
        ]
        for case in cases:
            d = work / case.name
            d.mkdir()
            ctx = Ctx(d)
            xml, fin = stdin_file(case, ctx)
            jobs.append((case.name, "cli", [py, "-m", "memlock_guard.cli", "estimate",
                                            "--xml", xml, "--host-facts", str(ctx.host_file),
                                            "--format", "json"], fin, None))
            if case.hook:
                jobs.append((case.name, "hook",
                             [py, "-I", "-S", str(hook), "bench", "prepare", "begin", "-"],
                             Path(xml) if xml != "-" else fin, stripped))
        for name, path, argv, fin, env in jobs:
            run = measure(argv, fin, env)
            print(row(name, path, run), flush=True)
            if run.seconds > worst_t[0]:
                worst_t = (run.seconds, f"{name} ({path})")
            if run.rss > worst_m[0]:
                worst_m = (run.rss, f"{name} ({path})")
    print()
    print(f"worst time: {worst_t[0]:.3f} s = {worst_t[0] / TIME_TARGET:.2f} x target, "
          f"{worst_t[1]}")
    print(f"worst RSS:  {worst_m[0] / 2**20:.1f} MB = {worst_m[0] / RSS_TARGET:.2f} x target, "
          f"{worst_m[1]}")
    print(json.dumps({"worst_seconds": round(worst_t[0], 3), "worst_seconds_case": worst_t[1],
                      "worst_rss_bytes": worst_m[0], "worst_rss_case": worst_m[1]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
