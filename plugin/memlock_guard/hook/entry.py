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
A decision already made on identical inputs is replayed from cache.py
without loading lxml, pluggy or the engine.
"""

from __future__ import annotations

import os
import sys

from ..support.defaults import AUDIT_LOG, FACTS_CACHE, MAX_XML_BYTES, POLICY_PATH
from .outcome import (
    EXIT_OK,
    EXIT_REFUSE,
    DeadlineExceeded,
    HookAnswer,
    Progress,
    describe,
    failed,
    one_paragraph,
)

TYPE_CHECKING = False  # typing itself costs a few ms on the path this module exists for
if TYPE_CHECKING:
    from typing import IO, Any

ACTING = frozenset({("prepare", "begin"), ("migrate", "begin"), ("restore", "begin")})
# libvirt has no timeout for hooks and holds the domain while one runs; a real decision
# takes well under a second, so this only ever fires on a stuck step.
DEADLINE_SECONDS = 5.0
# The watchdog thread's extra wait, for a step stuck where the alarm signal cannot
# interrupt it (C code): then it writes the on-error outcome and exits the process.
WATCHDOG_GRACE = 1.0


def acts_on(op: str, subop: str) -> bool:
    return (op, subop) in ACTING


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

    progress = Progress(argv[0], argv[1], AUDIT_LOG, _thread.allocate_lock())
    guard = _Deadline(deadline, progress, use_syslog)
    outcome: HookAnswer | None = None
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
    from ..support.defaults import POLICY_ENV_VAR

    return run(sys.argv[1:], policy_path=os.environ.get(POLICY_ENV_VAR))


def _answer(op: str, stdin: IO[bytes], progress: Progress, policy_path: str | None,
            facts_path: str | None, cache_dir: str | None) -> HookAnswer:
    _provisional_policy(progress, policy_path)
    data = _read_stdin(stdin, MAX_XML_BYTES)
    digest = None
    if cache_dir and len(data) <= MAX_XML_BYTES:
        from . import cache as decision_cache

        digest = decision_cache.key(op, data, policy_path or POLICY_PATH, facts_path)
        if digest is not None:
            hit = decision_cache.lookup(cache_dir, digest)
            if hit is not None:
                return _replay(hit, progress)
    from .decision import decide

    # An oversized XML is refused by decide() too (xmlsafe.parse), but only after the
    # policy is loaded: raising here answered with the built-in on-error (allow) and
    # audit log, whatever the policy said.
    outcome = decide(op, data, progress, policy_path, facts_path, cache_dir)
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
    the built-in on-error and audit log instead of the operator's. decide() then
    overrides both with the parsed policy.
    """
    import stat

    from ..support.defaults import MAX_POLICY_BYTES, salvage

    try:
        fd = os.open(policy_path or POLICY_PATH, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return
        data = os.read(fd, MAX_POLICY_BYTES)
    except OSError:
        return
    finally:
        os.close(fd)
    on_error, audit_log = salvage(data)
    if on_error is not None:
        progress.on_error = on_error
    if audit_log is not None:
        progress.audit_log = audit_log


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


def _replay(entry: dict[str, Any], progress: Progress) -> HookAnswer:
    from ..support import audit

    record = dict(entry["record"])
    record.update(time=audit.now(), pid=os.getpid(), cached=True)
    progress.audit_log = entry.get("audit_log") or None
    progress.on_error = str(entry.get("on_error", progress.on_error))
    return HookAnswer(int(entry["exit_code"]), record, str(entry["stdout"]),
                      str(entry["stderr"]))


def _emit(outcome: HookAnswer, progress: Progress, stdout: IO[str], stderr: IO[str],
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
