"""The libvirt qemu hook: ``NAME OP SUBOP EXTRA`` on argv, the domain XML on stdin.

- ``prepare begin``: judge the domain and allow (exit 0), warn (exit 0, the paragraph on
  stderr and in the audit log) or refuse (exit 1, one paragraph on stderr, which virsh
  shows as "Hook script execution failed: ... unexpected exit status 1: <paragraph>").
- ``migrate begin`` / ``restore begin``: when the policy lets that op adjust and the
  limit is short, print the same XML with ``<memtune><hard_limit>`` raised to the
  recommended value (never lowered); otherwise print nothing, which keeps libvirt's XML.
- Every other op: exit 0 at once. hooks/qemu filters them before importing anything;
  this module, too, imports only the standard library at the top.

Failure of our own (unreadable or broken policy, bad XML, a plugin left out, an
internal error, the deadline) takes the policy's ``on-error``: allow (exit 0, loudly:
stderr, audit log, syslog) or refuse (exit 1). The hook never calls back into libvirt,
which holds the domain while it waits for us, and never shows libvirt a traceback.

Host facts are the cheap ones (sysfs, stat of ROM files) plus a JSON cache that
install-hook writes with the slow ones: the libvirt and QEMU versions and QEMU's data
directories (``/var/lib/memlock-guard/host-facts.json``, the --host-facts format).
A decision already made on identical inputs is replayed from decision_cache.py
without loading lxml, pluggy or the engine.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing itself costs a few ms on the path this module exists for
if TYPE_CHECKING:
    from typing import IO, Any

ACTING = frozenset({("prepare", "begin"), ("migrate", "begin"), ("restore", "begin")})
STATE_DIR = "/var/lib/memlock-guard"
FACTS_CACHE = f"{STATE_DIR}/host-facts.json"
DECISION_CACHE = f"{STATE_DIR}/decisions"
DEFAULT_AUDIT_LOG = "/var/log/memlock-guard/audit.jsonl"  # policy.DEFAULT_AUDIT_LOG
# libvirt has no timeout for hooks and holds the domain while one runs; a real decision
# takes well under a second, so this only ever fires on a stuck step.
DEADLINE_SECONDS = 5.0
# The watchdog thread's extra wait, for a step stuck where the alarm signal cannot
# interrupt it (C code): then it writes the on-error outcome and exits the process.
WATCHDOG_GRACE = 1.0
MAX_XML_BYTES = 16 * 1024 * 1024  # xmlsafe.MAX_XML_BYTES

EXIT_OK = 0
EXIT_REFUSE = 1


def acts_on(op: str, subop: str) -> bool:
    return (op, subop) in ACTING


class DeadlineExceeded(BaseException):
    """Raised by SIGALRM in whatever step is running. A BaseException, like
    KeyboardInterrupt, so that no ``except Exception`` on the way (the engine's guard
    around third-party plugins, a plugin's own retry loop) can swallow it and keep
    the step going until the watchdog has to kill the process."""


def run(argv: list[str], *, stdin: IO[bytes] | None = None, stdout: IO[str] | None = None,
        stderr: IO[str] | None = None, policy_path: str | None = None,
        facts_path: str | None = FACTS_CACHE, deadline: float = DEADLINE_SECONDS,
        use_syslog: bool = True, cache_dir: str | None = None) -> int:
    """One hook invocation; returns the exit status. Never raises.

    ``cache_dir`` enables the decision cache (hooks/qemu passes DECISION_CACHE);
    ``deadline`` <= 0 disables the deadline.
    """
    if len(argv) < 3 or not acts_on(argv[1], argv[2]):
        return EXIT_OK
    stdin = stdin if stdin is not None else sys.stdin.buffer
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    import _thread

    progress = Progress(argv[0], argv[1], DEFAULT_AUDIT_LOG, _thread.allocate_lock())
    guard = _Deadline(deadline, progress, use_syslog)
    outcome: Any = None
    try:
        guard.arm()
        try:
            outcome = _answer(argv[1], stdin, progress, policy_path, facts_path, cache_dir)
        finally:
            guard.stop_alarm()
    except BaseException as e:  # libvirt must never see a traceback
        # The alarm fires once and is stopped above, so nothing can interrupt this.
        outcome = failed(progress, describe(e, deadline))
    if not guard.disarm():
        # The watchdog has answered libvirt already and is ending the process.
        forever = _thread.allocate_lock()
        forever.acquire()
        forever.acquire()
    return _emit(outcome, progress, stdout, stderr, use_syslog)


def main() -> int:
    """``python -m memlock_guard.hook.entry NAME OP SUBOP EXTRA`` (hooks/qemu is the usual path)."""
    return run(sys.argv[1:], policy_path=os.environ.get("MEMLOCK_GUARD_POLICY"))


class Progress:
    """What is known so far, so a failure (or the watchdog) can answer as the policy asks.

    Mutable and shared with the watchdog thread; ``lock`` guards ``finished``.
    """

    __slots__ = ("audit_log", "domain", "finished", "lock", "on_error", "op",
                 "policy_origin", "uuid")

    def __init__(self, domain: str, op: str, audit_log: str | None, lock: Any) -> None:
        self.domain = domain
        self.op = op
        self.uuid: str | None = None
        self.on_error = "allow"
        self.audit_log = audit_log
        self.policy_origin: str | None = None
        self.finished = False
        self.lock = lock


def _answer(op: str, stdin: IO[bytes], progress: Progress, policy_path: str | None,
            facts_path: str | None, cache_dir: str | None) -> Any:
    _provisional_policy(progress, policy_path)
    data = _read_stdin(stdin, MAX_XML_BYTES)
    digest = None
    if cache_dir and len(data) <= MAX_XML_BYTES:
        from . import cache as decision_cache

        policy_file = policy_path or "/etc/memlock-guard/policy.xml"  # policy.DEFAULT_PATH
        digest = decision_cache.key(op, data, policy_file, facts_path)
        if digest is not None:
            hit = decision_cache.lookup(cache_dir, digest)
            if hit is not None:
                return _replay(hit, progress)
    from .decision import decide

    # An oversized XML is refused by decide() too (xmlsafe.parse), but only after the
    # policy is loaded: raising here answered with the built-in on-error (allow) and
    # audit log, whatever the policy said.
    outcome = decide(op, data, progress, policy_path, facts_path)
    if digest is not None and cache_dir and outcome.cacheable:
        from . import cache as decision_cache

        decision_cache.store(cache_dir, digest, exit_code=outcome.exit_code,
                             stdout=outcome.stdout, stderr=outcome.stderr,
                             record=outcome.record, files=outcome.files,
                             audit_log=progress.audit_log, on_error=progress.on_error)
    return outcome


def _provisional_policy(progress: Progress, policy_path: str | None) -> None:
    """Take on-error and audit-log from the policy file's text before reading stdin.

    The policy proper is loaded (with lxml) only after stdin, for the decision cache's
    sake; until then a stuck stdin, or an XML too large to read, would be answered with
    the built-in on-error and audit log instead of the operator's. Same textual rule as
    policy.salvage(): a single unambiguous value, else nothing; decide() then overrides.
    """
    import re
    import stat

    path = policy_path or "/etc/memlock-guard/policy.xml"  # policy.DEFAULT_PATH
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return
        data = os.read(fd, 256 * 1024)  # policy.MAX_POLICY_BYTES
    except OSError:
        return
    finally:
        os.close(fd)
    prefix = rb"<(?:[A-Za-z_][\w.-]*:)?"
    for pattern, attr in ((prefix + rb"on-error\s*>\s*(allow|refuse)\s*<", "on_error"),
                          (prefix + rb"audit-log\s*>\s*(/[^<>\x00-\x1f]{0,4000}?)\s*<",
                           "audit_log")):
        found = set(re.findall(pattern, data))
        if len(found) == 1:
            setattr(progress, attr, found.pop().decode("ascii", "replace"))


def _read_stdin(stdin: IO[bytes], limit: int) -> bytes:
    """Everything up to EOF, or ``limit`` + 1 bytes (too large). One read() on a raw pipe
    returns only what has arrived so far: a domain XML written in pieces would be judged
    on its first piece. A writer that never closes is left to the deadline."""
    chunks: list[bytes] = []
    total = 0
    while total <= limit:
        chunk = stdin.read(limit + 1 - total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


class Answer:
    """What the hook tells libvirt and the audit log. Light on purpose (no dataclasses,
    which import inspect): the cached and the failure paths must not pay for the engine;
    hook_decision.Outcome is the same shape."""

    __slots__ = ("exit_code", "record", "stderr", "stdout")

    def __init__(self, exit_code: int, record: dict[str, Any], stdout: str,
                 stderr: str) -> None:
        self.exit_code = exit_code
        self.record = record
        self.stdout = stdout
        self.stderr = stderr


def _replay(entry: dict[str, Any], progress: Progress) -> Answer:
    from ..support import audit

    record = dict(entry["record"])
    record.update(time=audit.now(), pid=os.getpid(), cached=True)
    progress.audit_log = entry.get("audit_log") or None
    progress.on_error = str(entry.get("on_error", progress.on_error))
    return Answer(int(entry["exit_code"]), record, str(entry["stdout"]), str(entry["stderr"]))


def failed(progress: Progress, why: str, *, report: Any = None) -> Answer:
    """The on-error outcome: allow (loudly) or refuse, as the policy says.

    Needs nothing but the audit module, so it works when the failure is that lxml, the
    engine or a plugin could not even be imported.
    """
    from ..support import audit

    refuse = progress.on_error == "refuse"
    action = "refuse" if refuse else ("allow" if progress.op == "prepare" else "keep")
    kw: dict[str, Any] = {"action": action, "policy": progress.policy_origin, "error": why}
    if report is not None:
        record = audit.from_report(progress.op, report, **kw)
        record["verdict"] = "error"
    else:
        record = audit.entry(op=progress.op, domain=progress.domain, uuid=progress.uuid,
                             verdict="error", **kw)
    if refuse:
        msg = (f"memlock-guard could not check domain {progress.domain!r} ({why}); "
               f"the policy's on-error is refuse, so it is refused. Fix the problem, or set "
               f"<on-error>allow</on-error> in the policy to let starts through meanwhile.")
        return Answer(EXIT_REFUSE, record, "", msg)
    msg = (f"memlock-guard could not check domain {progress.domain!r} ({why}); "
           f"letting it through unchecked because the policy's on-error is allow.")
    return Answer(EXIT_OK, record, "", msg)


def describe(e: BaseException, deadline: float) -> str:
    from ..support.errors import MemlockGuardError

    if isinstance(e, DeadlineExceeded):
        return f"no decision within the hook's {deadline:g} s deadline"
    if isinstance(e, MemlockGuardError):
        return str(e)
    return f"internal error: {type(e).__name__}: {str(e)[:300]}"


def _emit(outcome: Any, progress: Progress, stdout: IO[str], stderr: IO[str],
          use_syslog: bool) -> int:
    from ..support import audit

    audit.log(progress.audit_log, outcome.record, use_syslog=use_syslog, stderr=stderr)
    try:
        if outcome.stdout:
            stdout.write(outcome.stdout)
            stdout.flush()
        if outcome.stderr:
            stderr.write(one_paragraph(outcome.stderr) + "\n")
            stderr.flush()
    except (OSError, ValueError):
        pass  # libvirt went away; the exit status is all that is left to give
    return int(outcome.exit_code)


def one_paragraph(text: str) -> str:
    """One line for virsh's error message. Names and addresses come from the domain XML,
    so control characters (terminal escapes) are replaced, not passed to the terminal."""
    return "".join(c if c.isprintable() else "?" for c in " ".join(text.split()))


class _Deadline:
    """SIGALRM raises DeadlineExceeded in the main thread at ``seconds``; a watchdog
    thread ends the process with the on-error outcome ``WATCHDOG_GRACE`` later, for a
    step stuck in C code where the signal's exception cannot be raised."""

    def __init__(self, seconds: float, progress: Progress, use_syslog: bool) -> None:
        self.seconds = seconds
        self.progress = progress
        self.use_syslog = use_syslog
        self._old_handler: Any = None
        self._alarm = False

    def arm(self) -> None:
        if self.seconds <= 0:
            return
        import _thread
        import signal

        def on_alarm(signum: int, frame: object) -> None:
            raise DeadlineExceeded()

        try:
            self._old_handler = signal.signal(signal.SIGALRM, on_alarm)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
            self._alarm = True
        except ValueError:
            pass  # not the main thread: the watchdog alone guards this run
        _thread.start_new_thread(self._watch, ())

    def stop_alarm(self) -> None:
        if self._alarm:
            import signal

            signal.setitimer(signal.ITIMER_REAL, 0)

    def disarm(self) -> bool:
        """Stop both; False when the watchdog already fired (it owns the exit)."""
        if self._alarm:
            import signal

            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._old_handler or signal.SIG_DFL)
            self._alarm = False
        with self.progress.lock:
            if self.progress.finished:
                return False
            self.progress.finished = True
            return True

    def _watch(self) -> None:
        import time

        time.sleep(self.seconds + WATCHDOG_GRACE)
        with self.progress.lock:
            if self.progress.finished:
                return
            self.progress.finished = True
        code = EXIT_REFUSE if self.progress.on_error == "refuse" else EXIT_OK
        try:
            from ..support import audit

            outcome = failed(self.progress, f"step stuck past the hook's "
                                            f"{self.seconds:g} s deadline")
            code = outcome.exit_code
            audit.log(self.progress.audit_log, outcome.record, use_syslog=self.use_syslog)
            os.write(2, (one_paragraph(outcome.stderr) + "\n").encode("utf-8", "replace"))
        finally:
            os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
