"""The libvirt hook under hostile input and failure: it always ends in the policy's answer.

- every hostile domain XML of hostile_cases.py, on stdin for ``prepare begin``, with
  ``on-error`` allow and refuse: exit 0 or 1 as the policy says, one line on stderr
  naming the problem, the audit record says ``error``, nothing leaks;
- broken, partial, unreadable and oddly linked policy files;
- an audit log that cannot be written: the decision is made all the same;
- third-party plugins that raise, return nonsense, exit, fail to import, or hang;
- the internal deadline: a stuck step (stdin never closed, a sleeping plugin, a plugin
  stuck where signals cannot reach it) ends in the on-error outcome within seconds.

Most cases call ``hook.run`` in-process (its real entry, given stdin/stdout/stderr);
a few run the real ``hooks/qemu`` executable the way libvirtd does, with a stripped
environment. Test plugins are real distributions found through their entry points
(a ``.dist-info`` directory on sys.path), allowed by name in the policy.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from memlock_guard.hook import entry as hook
from memlock_guard.support import audit

from ..conftest import ROOT
from .hostile_cases import (
    CASES,
    PINNED_HOST,
    POLICY_CASES,
    Case,
    Ctx,
    domain,
    hostdevs,
    policy_file,
)

PASSWD_FIRST_LINE = Path("/etc/passwd").read_text().splitlines()[0]
NS = "urn:memlock-guard:policy:1"
HOOK_CASES = [c for c in CASES if c.hook]
# A domain that fits (1 VFIO device, libvirt's 1 GiB fudge is plenty) and one that is
# short (a QXL card behind 3 vIOMMU containers: video RAM x 3 > 1 GiB).
FITS = domain(hostdevs(1)).encode()
SHORT = domain(hostdevs(3) + "<iommu model='intel'/><video><model type='qxl' ram='262144' "
               "vram='262144' vram64='1048576'/></video>").encode()

# Test plugins, each its own module so that one failing import leaves the others.
PLUGINS = {
    "mg_t_sleepy": '''
import time
from memlock_guard.plugins.spec import hookimpl

class P:
    @hookimpl
    def memlock_guard_exposures(self, domain, host):
        while True:  # a retry loop that swallows every Exception
            try:
                time.sleep(60)
            except Exception:
                pass

plugin = P()
''',
    "mg_t_stuck": '''
import signal, time
from memlock_guard.plugins.spec import hookimpl

class P:
    @hookimpl
    def memlock_guard_exposures(self, domain, host):
        # Stands for a step stuck in C code, where SIGALRM's handler never runs.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(60)
        return []

plugin = P()
''',
    "mg_t_raises": '''
from memlock_guard.plugins.spec import hookimpl

class P:
    @hookimpl
    def memlock_guard_exposures(self, domain, host):
        raise RuntimeError("plugin exploded")

plugin = P()
''',
    "mg_t_nonsense": '''
from memlock_guard.plugins.spec import hookimpl
from memlock_guard.accounting.ledger import Backing, Exposure, Kind

class P:
    @hookimpl
    def memlock_guard_exposures(self, domain, host):
        return [Exposure("negative", -4096, Backing.ANON, False, Kind.OTHER)]

plugin = P()
''',
    "mg_t_exits": '''
import sys
from memlock_guard.plugins.spec import hookimpl

class P:
    @hookimpl
    def memlock_guard_exposures(self, domain, host):
        sys.exit(0)

plugin = P()
''',
    "mg_t_badimport": '''
raise ImportError("this plugin cannot be imported")
''',
}
ENTRY_POINTS = {"sleepy": "mg_t_sleepy:plugin", "stuck": "mg_t_stuck:plugin",
                "raises": "mg_t_raises:plugin", "nonsense": "mg_t_nonsense:plugin",
                "exits": "mg_t_exits:plugin", "badimport": "mg_t_badimport:plugin"}


@pytest.fixture(scope="session")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the test plugins as an installed distribution would."""
    d = tmp_path_factory.mktemp("plugins")
    for mod, src in PLUGINS.items():
        (d / f"{mod}.py").write_text(src)
    info = d / "mg_hostile_test_plugins-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mg-hostile-test-plugins\n"
                                   "Version: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[memlock_guard]\n" + "".join(f"{k} = {v}\n" for k, v in ENTRY_POINTS.items()))
    return d


@dataclass
class Env:
    dir: Path

    @property
    def facts(self) -> Path:
        p = self.dir / "facts.json"
        if not p.exists():
            p.write_text(json.dumps(PINNED_HOST))
        return p

    @property
    def audit(self) -> Path:
        return self.dir / "audit.jsonl"

    def policy(self, on_error: str = "allow", extra: str = "",
               audit_log: str | None = None) -> Path:
        p = self.dir / f"policy-{on_error}.xml"
        p.write_text(f"<policy xmlns='{NS}'><on-error>{on_error}</on-error>"
                     f"<audit-log>{audit_log or self.audit}</audit-log>{extra}</policy>")
        return p

    def records(self) -> list[dict]:  # type: ignore[type-arg]
        return audit.read(str(self.audit)) if self.audit.exists() else []


@dataclass
class Result:
    rc: int
    out: str
    err: str
    seconds: float


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def run_hook(env: Env, data: bytes | None, policy: Path | str, *, op: str = "prepare",
             deadline: float = hook.DEADLINE_SECONDS, stdin: io.RawIOBase | None = None,
             name: str = "hostile") -> Result:
    out, err = io.StringIO(), io.StringIO()
    t = time.monotonic()
    rc = hook.run([name, op, "begin", "-"],
                  stdin=stdin if stdin is not None else io.BytesIO(data or b""),
                  stdout=out, stderr=err, policy_path=str(policy), facts_path=str(env.facts),
                  deadline=deadline, use_syslog=False)
    return Result(rc, out.getvalue(), err.getvalue(), time.monotonic() - t)


def assert_on_error(r: Result, env: Env, on_error: str, why: str) -> None:
    """The failure outcome: exit per on-error, one stderr line naming why, an audit record."""
    assert r.rc == (1 if on_error == "refuse" else 0), r.err
    assert r.out == ""
    assert r.err.count("\n") == 1, r.err
    assert "could not check" in r.err and why in r.err, r.err
    assert "Traceback" not in r.err
    rec = env.records()[-1]
    assert rec["verdict"] == "error"
    assert rec["action"] == ("refuse" if on_error == "refuse" else "allow")
    assert why in rec["error"]


def assert_no_leak(ctx: Ctx, env: Env, *texts: str) -> None:
    logged = env.audit.read_text() if env.audit.exists() else ""
    for text in (*texts, logged):
        assert ctx.secret not in text
        assert PASSWD_FIRST_LINE not in text


# -- hostile domain XML ------------------------------------------------------------------

@pytest.fixture
def listener() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    s.setblocking(False)
    yield s
    s.close()


def _stdin_of(case: Case, ctx: Ctx) -> bytes:
    inp = case.build(ctx)
    return inp.stdin if inp.xml == "-" else Path(inp.xml).read_bytes()  # type: ignore[return-value]


@pytest.mark.parametrize("on_error", ["allow", "refuse"])
@pytest.mark.parametrize("case", HOOK_CASES, ids=[c.name for c in HOOK_CASES])
def test_hostile_xml_follows_on_error(case: Case, on_error: str, env: Env,
                                      listener: socket.socket) -> None:
    ctx = Ctx(env.dir, port=listener.getsockname()[1])
    r = run_hook(env, _stdin_of(case, ctx), env.policy(on_error))
    assert_no_leak(ctx, env, r.out, r.err)
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing connected
    if case.exit == 2:
        assert_on_error(r, env, on_error, case.message.replace("domain XML", ""))
    else:
        assert r.rc == 0, r.err
        assert env.records()[-1]["verdict"] in ("fits", "unlimited")


def test_a_short_domain_is_refused_and_a_fitting_one_allowed(env: Env) -> None:
    """The baseline the failure tests compare with: verdicts, not errors."""
    r = run_hook(env, SHORT, env.policy("allow"))
    assert r.rc == 1 and "refused the start" in r.err
    assert env.records()[-1]["verdict"] == "short"
    r = run_hook(env, FITS, env.policy("refuse"))
    assert r.rc == 0 and r.err == ""
    assert env.records()[-1]["action"] == "allow"


@pytest.mark.parametrize("op", ["release", "stopped", "started", "reconnect"])
def test_ops_that_do_not_act_ignore_stdin(op: str, env: Env) -> None:
    never = io.BytesIO(b"\xff" * 100)
    r = run_hook(env, None, env.policy("refuse"), op=op, stdin=never)
    assert (r.rc, r.out, r.err) == (0, "", "")
    assert never.tell() == 0


# -- the real executable, as libvirtd runs it ------------------------------------------------

def _installed_hook(env: Env, policy: Path) -> Path:
    """hooks/qemu with the two settings install-hook writes."""
    src = (ROOT / "hooks" / "qemu").read_text()
    src = src.replace("POLICY: str | None = None", f"POLICY: str | None = {str(policy)!r}")
    src = src.replace('FACTS: str | None = "/var/lib/memlock-guard/host-facts.json"',
                      f"FACTS: str | None = {str(env.facts)!r}")
    assert str(policy) in src and str(env.facts) in src
    p = env.dir / "qemu"
    p.write_text(src)
    p.chmod(0o755)
    return p


def run_real_hook(env: Env, data: bytes, policy: Path, python: str = sys.executable,
                  timeout: float = 30) -> Result:
    exe = _installed_hook(env, policy)
    t = time.monotonic()
    p = subprocess.run([python, "-I", "-S", str(exe), "hostile", "prepare", "begin", "-"],
                       input=data, capture_output=True, timeout=timeout,
                       env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"}, cwd="/")
    return Result(p.returncode, p.stdout.decode(errors="replace"),
                  p.stderr.decode(errors="replace"), time.monotonic() - t)


@pytest.mark.parametrize("on_error", ["allow", "refuse"])
@pytest.mark.parametrize("name", ["xxe-file", "billion-laughs", "10000-deep", "empty-stdin",
                                  "wrong-root", "50MB-stdin", "overflow-memory"])
def test_real_hook_executable_follows_on_error(name: str, on_error: str, env: Env) -> None:
    case = next(c for c in CASES if c.name == name)
    ctx = Ctx(env.dir)
    r = run_real_hook(env, _stdin_of(case, ctx), env.policy(on_error))
    assert_no_leak(ctx, env, r.out, r.err)
    assert_on_error(r, env, on_error, case.message.replace("domain XML", ""))


@pytest.mark.parametrize("on_error", ["allow", "refuse"])
def test_hook_without_its_package_follows_on_error(on_error: str, env: Env) -> None:
    """An interpreter where memlock_guard is not installed (an upgrade gone wrong)."""
    python = "/usr/bin/python3"
    probe = subprocess.run([python, "-I", "-c", "import memlock_guard"], capture_output=True)
    if probe.returncode == 0:
        pytest.skip("memlock_guard is importable by the system python")
    r = run_real_hook(env, FITS, env.policy(on_error), python=python)
    assert r.rc == (1 if on_error == "refuse" else 0)
    assert r.err.count("\n") == 1 and "cannot load its package" in r.err


# -- policy files --------------------------------------------------------------------------

@pytest.mark.parametrize("name", POLICY_CASES)
def test_broken_policy_follows_its_on_error(name: str, env: Env) -> None:
    make, on_error, why = POLICY_CASES[name]
    path = make(env)
    r = run_hook(env, FITS, path)
    assert r.seconds < 3
    assert r.rc == (1 if on_error == "refuse" else 0), r.err
    assert r.err.count("\n") == 1 and "could not check" in r.err and why in r.err, r.err
    assert PASSWD_FIRST_LINE not in r.err + r.out


def test_truncated_policy_salvages_its_audit_log(env: Env) -> None:
    path = policy_file(env, f"<policy xmlns='{NS}'><on-error>refuse</on-error>"
                      f"<audit-log>{env.audit}</audit-log><mode>nonsense".encode())
    r = run_hook(env, FITS, path)
    assert r.rc == 1
    assert env.records()[-1]["verdict"] == "error"


def test_unreadable_policy_follows_the_default_on_error(env: Env) -> None:
    """Permission denied, as for root on a root-squashed NFS mount: root without the
    DAC override capabilities, reading a mode-000 policy. Its on-error cannot be read
    either, so the default (allow) applies."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and util-linux setpriv")
    policy = env.policy("refuse")
    policy.chmod(0o000)
    script = ("import sys; from memlock_guard.hook.entry import run; "
              "sys.exit(run(['hostile', 'prepare', 'begin', '-'], policy_path=sys.argv[1], "
              "facts_path=sys.argv[2], use_syslog=False))")
    p = subprocess.run([setpriv, "--bounding-set", "-dac_override,-dac_read_search",
                        "--inh-caps", "-all", "--", sys.executable, "-c", script,
                        str(policy), str(env.facts)],
                       input=FITS, capture_output=True, timeout=30)
    err = p.stderr.decode()
    assert "Permission denied" in err and "could not check" in err, err
    assert p.returncode == 0


# -- the audit log ---------------------------------------------------------------------------

def _not_a_dir(env: Env) -> str:
    (env.dir / "plainfile").write_text("")
    return str(env.dir / "plainfile" / "audit.jsonl")


def _audit_fifo(env: Env) -> str:
    p = env.dir / "audit.fifo"
    os.mkfifo(p)
    return str(p)


AUDIT_CASES = {
    "under-a-file": _not_a_dir,
    "a-directory": lambda e: str(e.dir),
    "a-fifo-without-reader": _audit_fifo,  # used to block open() for ever
    "on-dev-full": lambda e: "/dev/full",
}


@pytest.mark.parametrize("where", AUDIT_CASES)
@pytest.mark.parametrize(("data", "rc", "said"), [(FITS, 0, None),
                                                  (SHORT, 1, "refused the start")])
def test_unwritable_audit_log_still_decides(where: str, data: bytes, rc: int, said: str | None,
                                            env: Env) -> None:
    log = AUDIT_CASES[where](env)
    r = run_hook(env, data, env.policy("refuse", audit_log=log))
    assert r.seconds < 5
    assert r.rc == rc
    lines = r.err.splitlines()
    assert any(line.startswith(f"memlock-guard: cannot write audit log {log}") for line in lines)
    if said:
        assert any(said in line for line in lines)


# -- third-party plugins ---------------------------------------------------------------------

@pytest.mark.parametrize("on_error", ["allow", "refuse"])
@pytest.mark.parametrize(("plugin", "why"), [
    ("raises", "plugin exploded"),
    ("nonsense", "nonsense bytes -4096"),
    ("exits", "SystemExit"),
    ("badimport", "failed to load"),
    ("not-installed", "is not installed"),
])
def test_plugin_failure_follows_on_error(plugin: str, why: str, on_error: str, env: Env,
                                         plugin_dir: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(plugin_dir))
    policy = env.policy(on_error, f"<plugins><allow>{plugin}</allow></plugins>")
    r = run_hook(env, FITS, policy)  # fits: only the plugin can make this an error
    assert_on_error(r, env, on_error, why)


# -- the deadline ------------------------------------------------------------------------------

@pytest.mark.parametrize("on_error", ["allow", "refuse"])
def test_stdin_that_never_closes_ends_at_the_deadline(on_error: str, env: Env) -> None:
    r_fd, w_fd = os.pipe()
    os.write(w_fd, FITS[:100])  # some XML, then nothing, and the writer stays open
    try:
        with open(r_fd, "rb", buffering=0) as stdin:
            r = run_hook(env, None, env.policy(on_error), stdin=stdin, deadline=1.0)
    finally:
        os.close(w_fd)
    assert 0.9 < r.seconds < 3
    assert_on_error(r, env, on_error, "deadline")


@pytest.mark.parametrize("on_error", ["allow", "refuse"])
def test_a_sleeping_plugin_ends_at_the_deadline(on_error: str, env: Env, plugin_dir: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugin even swallows every Exception: the deadline is not one."""
    monkeypatch.syspath_prepend(str(plugin_dir))
    policy = env.policy(on_error, "<plugins><allow>sleepy</allow></plugins>")
    r = run_hook(env, FITS, policy, deadline=1.0)
    assert 0.9 < r.seconds < 3
    assert_on_error(r, env, on_error, "deadline")


@pytest.mark.parametrize("on_error", ["allow", "refuse"])
def test_a_step_stuck_beyond_signals_is_ended_by_the_watchdog(on_error: str, env: Env,
                                                              plugin_dir: Path) -> None:
    """The real deadline (5 s) and watchdog (+1 s), in a process of its own: the watchdog
    ends it with os._exit, answering libvirt long before anyone would notice a hang."""
    policy = env.policy(on_error, "<plugins><allow>stuck</allow></plugins>")
    script = ("import sys; sys.path.insert(0, sys.argv[1]); "
              "from memlock_guard.hook.entry import run; "
              "sys.exit(run(['hostile', 'prepare', 'begin', '-'], policy_path=sys.argv[2], "
              "facts_path=sys.argv[3], use_syslog=False))")
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-c", script, str(plugin_dir), str(policy),
                        str(env.facts)], input=FITS, capture_output=True, timeout=60)
    seconds = time.monotonic() - t
    r = Result(p.returncode, p.stdout.decode(), p.stderr.decode(), seconds)
    limit = hook.DEADLINE_SECONDS + hook.WATCHDOG_GRACE
    assert limit - 0.5 < seconds < limit + 4
    assert_on_error(r, env, on_error, "deadline")


def test_deadline_is_far_below_what_libvirt_tolerates() -> None:
    """libvirt waits for ever; virsh's keepalive gives up after about 30 s (5 x 6 s)."""
    assert hook.DEADLINE_SECONDS + hook.WATCHDOG_GRACE <= 10


def test_the_hook_can_run_concurrently_with_a_stuck_writer(env: Env) -> None:
    """libvirtd starts VMs in parallel: one hook holding the audit lock delays the next
    by at most audit.LOCK_WAIT, and both decide."""
    import fcntl

    policy = env.policy("refuse")
    env.audit.write_text("")
    with open(env.audit, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        results: list[Result] = []
        t = threading.Thread(target=lambda: results.append(run_hook(env, FITS, policy,
                                                                    deadline=0)))
        t.start()
        t.join(timeout=10)
    assert results and results[0].rc == 0
    assert results[0].seconds < audit.LOCK_WAIT + 2
