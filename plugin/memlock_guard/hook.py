"""The libvirt qemu hook: ``NAME OP SUBOP EXTRA`` on argv, the domain XML on stdin.

- ``prepare begin``: judge the domain and allow (exit 0), warn (exit 0, the paragraph on
  stderr and in the audit log) or refuse (exit 1, one paragraph on stderr, which virsh
  shows as "Hook script execution failed: ... unexpected exit status 1: <paragraph>").
- ``migrate begin`` / ``restore begin``: when the policy lets that op adjust and the
  limit is short, print the same XML with ``<memtune><hard_limit>`` raised to the
  recommended value (never lowered); otherwise print nothing, which keeps libvirt's XML.
- Every other op: exit 0 at once. hooks/qemu filters them before importing this
  module; this module itself imports nothing heavy at the top either.

Failure of our own (unreadable or broken policy, bad XML, a plugin left out, an
internal error, the deadline) takes the policy's ``on-error``: allow (exit 0, loudly:
stderr, audit log, syslog) or refuse (exit 1). The hook never calls back into libvirt,
which holds the domain while it waits for us, and never shows libvirt a traceback.

Host facts are the cheap ones (sysfs, stat of ROM files) plus a JSON cache that
install-hook writes with the slow ones: the libvirt and QEMU versions and QEMU's data
directories (``/var/lib/memlock-guard/host-facts.json``, the --host-facts format).
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lxml import etree

    from .policy import Policy
    from .report import Report

ACTING = frozenset({("prepare", "begin"), ("migrate", "begin"), ("restore", "begin")})
FACTS_CACHE = "/var/lib/memlock-guard/host-facts.json"
# libvirt has no timeout for hooks and holds the domain while one runs; a real decision
# takes well under a second, so this only ever fires on a stuck step.
DEADLINE_SECONDS = 5.0
# The watchdog thread's extra wait, for a step stuck where the alarm signal cannot
# interrupt it (C code): then it writes the on-error outcome and exits the process.
WATCHDOG_GRACE = 1.0
MAX_FACTS_BYTES = 64 * 1024

EXIT_OK = 0
EXIT_REFUSE = 1


def acts_on(op: str, subop: str) -> bool:
    return (op, subop) in ACTING


class DeadlineExceeded(BaseException):
    """Raised by SIGALRM in whatever step is running. A BaseException, like
    KeyboardInterrupt, so that no ``except Exception`` on the way (the engine's guard
    around third-party plugins, a plugin's own retry loop) can swallow it and keep
    the step going until the watchdog has to kill the process."""


@dataclass(frozen=True, slots=True)
class Outcome:
    exit_code: int
    record: dict[str, Any]
    stdout: str = ""
    stderr: str = ""


@dataclass(slots=True)
class _Progress:
    """What is known so far, so the watchdog can fail the way the policy asks."""

    domain: str
    op: str
    uuid: str | None = None
    on_error: str = "allow"
    audit_log: str | None = None
    policy_origin: str | None = None
    finished: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


def run(argv: list[str], *, stdin: IO[bytes] | None = None, stdout: IO[str] | None = None,
        stderr: IO[str] | None = None, policy_path: str | None = None,
        facts_path: str | None = FACTS_CACHE, deadline: float = DEADLINE_SECONDS,
        use_syslog: bool = True) -> int:
    """One hook invocation; returns the exit status. Never raises."""
    if len(argv) < 3 or not acts_on(argv[1], argv[2]):
        return EXIT_OK
    stdin = stdin if stdin is not None else sys.stdin.buffer
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    from .policy import DEFAULT_AUDIT_LOG

    progress = _Progress(domain=argv[0], op=argv[1], audit_log=DEFAULT_AUDIT_LOG)
    guard = _Deadline(deadline, progress, use_syslog)
    try:
        guard.arm()
        try:
            outcome = _decide(argv[1], stdin, progress, policy_path, facts_path)
        finally:
            guard.stop_alarm()
    except BaseException as e:  # libvirt must never see a traceback
        # The alarm fires once and is stopped above, so nothing can interrupt this.
        outcome = _failed(progress, _describe(e, deadline))
    if not guard.disarm():
        # The watchdog has answered libvirt already and is ending the process.
        threading.Event().wait()
    return _emit(outcome, progress, stdout, stderr, use_syslog)


def main() -> int:
    """``python -m memlock_guard.hook NAME OP SUBOP EXTRA`` (hooks/qemu is the usual path)."""
    return run(sys.argv[1:], policy_path=os.environ.get("MEMLOCK_GUARD_POLICY"))


# -- deciding --------------------------------------------------------------------------

def _decide(op: str, stdin: IO[bytes], progress: _Progress,
            policy_path: str | None, facts_path: str | None) -> Outcome:
    from . import policy as pol
    from . import xmlsafe
    from .domain.model import domain_from_element

    try:
        path, named = pol.policy_path(policy_path, environ={})
        base = pol.load(path, named=named)
    except pol.PolicyError as e:
        if e.on_error is not None:
            progress.on_error = e.on_error.value
        if e.audit_log is not None:
            progress.audit_log = e.audit_log
        raise
    progress.on_error = base.on_error.value
    progress.audit_log = base.audit_log
    progress.policy_origin = base.origin

    data = xmlsafe.read_limited(stdin, what="domain XML on stdin")
    root = xmlsafe.parse(data, what="domain XML on stdin")
    domain = domain_from_element(root)
    progress.uuid = domain.uuid
    p = pol.for_domain(base, domain)
    progress.policy_origin = p.origin

    from .report import assess

    facts = _host_facts(domain, facts_path)
    pm = pol.plugin_manager(p) if p.plugins else None
    report = assess(domain, facts, pol.to_settings(p), pm)
    return _judge(op, report, p, root, progress)


def _judge(op: str, report: Report, p: Policy, root: etree._Element,
           progress: _Progress) -> Outcome:
    from . import audit
    from .verdict import Outcome as Verdict

    v = report.verdict
    excluded = report.ledger.excluded_plugins
    if v.outcome is not Verdict.SHORT:
        if excluded:
            # The plugins left out could only have added bytes: a fit is not proven.
            return _failed(progress, "third-party plugin(s) left out of the ledger: "
                           + "; ".join(excluded), report=report)
        action = "allow" if op == "prepare" else "keep"
        return Outcome(EXIT_OK, audit.from_report(op, report, action=action, policy=p.origin))

    if op == "prepare":
        text = paragraph(report, p)
        if p.on_shortfall.value == "warn":
            return Outcome(EXIT_OK, audit.from_report(op, report, action="warn", policy=p.origin,
                                                      message=text),
                           stderr=f"memlock-guard: warning (on-shortfall warn, the start goes "
                                  f"on): {text}")
        return Outcome(EXIT_REFUSE, audit.from_report(op, report, action="refuse",
                                                      policy=p.origin, message=text),
                       stderr=f"memlock-guard refused the start: {text}")

    if not p.may_adjust(op):
        return Outcome(EXIT_OK, audit.from_report(op, report, action="keep", policy=p.origin,
                                                  reason=f"adjust does not include {op}"))
    before = report.domain.memtune.hard_limit
    target = max(v.recommended_hard_limit, before or 0)
    if not raise_hard_limit(root, target):
        return Outcome(EXIT_OK, audit.from_report(op, report, action="keep", policy=p.origin,
                                                  reason="hard_limit already at least "
                                                         "the recommended value"))
    from lxml import etree

    xml = etree.tostring(root, encoding="unicode")
    return Outcome(EXIT_OK, audit.from_report(op, report, action="adjust", policy=p.origin,
                                              hard_limit_from=before, hard_limit_to=target),
                   stdout=xml if xml.endswith("\n") else xml + "\n")


def _failed(progress: _Progress, why: str, *, report: Report | None = None) -> Outcome:
    from . import audit

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
        return Outcome(EXIT_REFUSE, record, stderr=msg)
    msg = (f"memlock-guard could not check domain {progress.domain!r} ({why}); "
           f"letting it through unchecked because the policy's on-error is allow.")
    return Outcome(EXIT_OK, record, stderr=msg)


def _describe(e: BaseException, deadline: float) -> str:
    from .errors import MemlockGuardError

    if isinstance(e, DeadlineExceeded):
        return f"no decision within the hook's {deadline:g} s deadline"
    if isinstance(e, MemlockGuardError):
        return str(e)
    return f"internal error: {type(e).__name__}: {str(e)[:300]}"


def _emit(outcome: Outcome, progress: _Progress, stdout: IO[str], stderr: IO[str],
          use_syslog: bool) -> int:
    from . import audit

    audit.log(progress.audit_log, outcome.record, use_syslog=use_syslog, stderr=stderr)
    try:
        if outcome.stdout:
            stdout.write(outcome.stdout)
            stdout.flush()
        if outcome.stderr:
            stderr.write(_one_paragraph(outcome.stderr) + "\n")
            stderr.flush()
    except (OSError, ValueError):
        pass  # libvirt went away; the exit status is all that is left to give
    return outcome.exit_code


def _one_paragraph(text: str) -> str:
    return " ".join(text.split())


# -- the refusal paragraph --------------------------------------------------------------

def paragraph(report: Report, p: Policy) -> str:
    """The domain, mode, requirement, limit and its source, biggest items, and the remedy."""
    import shlex

    from .units import human

    v = report.verdict
    name = report.domain.name
    limit = v.limit.bytes
    assert limit is not None  # a short verdict has a finite limit
    items = []
    for i in report.ledger.biggest(3):
        times = f" x {i.containers} containers" if i.containers > 1 else ""
        items.append(f"{i.source} {human(i.bytes)}{times}")
    kib = v.recommended_hard_limit // 1024
    quoted = shlex.quote(name)
    overridden = (f" (per-domain policy: {', '.join(p.overridden)})" if p.overridden else "")
    return (
        f"domain {name!r} needs {human(v.required)} ({v.required} bytes) of locked memory "
        f"in {v.mode.value} accounting ({v.mode_reason}){overridden}, but QEMU would get "
        f"{human(limit)} ({limit} bytes) from {v.limit.source} ({v.limit.explanation}), "
        f"short by {human(v.required - limit)}. Biggest items: {'; '.join(items)}. "
        f"Remedy: virsh memtune {quoted} --hard-limit {kib} --config "
        f"(KiB, = {human(v.recommended_hard_limit)}: the requirement or QEMU's footprint, "
        f"whichever is larger, plus margin), or run: memlock-guard apply {quoted}"
    )


# -- editing the XML for migrate/restore -------------------------------------------------

# libvirt writes these before <memtune>; a new <memtune> goes after the last present.
_BEFORE_MEMTUNE = ("name", "uuid", "genid", "title", "description", "metadata", "maxMemory",
                   "memory", "currentMemory", "blkiotune")


def raise_hard_limit(root: etree._Element, target: int) -> bool:
    """Set ``<memtune><hard_limit unit='KiB'>`` to ``target`` bytes unless it is already
    at least that; True when the tree changed. Nothing else in the tree is touched."""
    from lxml import etree

    from .units import KiB, parse_scaled, round_up

    target = round_up(target, KiB)
    memtune = root.find("memtune")
    if memtune is None:
        anchor = None
        for child in root:
            if isinstance(child.tag, str) and child.tag in _BEFORE_MEMTUNE:
                anchor = child
        memtune = etree.Element("memtune")
        if anchor is None:
            root.insert(0, memtune)
            indent = root.text
        else:
            anchor.addnext(memtune)
            indent = anchor.tail
        memtune.tail = indent
        memtune.text = (indent or "") + "  " if indent and indent.startswith("\n") else None
    hard = memtune.find("hard_limit")
    if hard is not None:
        current = parse_scaled(hard.text, hard.get("unit"), what="<memtune><hard_limit>")
        if current >= target:
            return False
    else:
        hard = etree.Element("hard_limit")
        first_text = memtune.text
        memtune.insert(0, hard)
        if len(memtune) > 1:
            hard.tail = first_text
        else:
            hard.tail = memtune.tail
            if memtune.text is None and memtune.tail and memtune.tail.startswith("\n"):
                memtune.text = memtune.tail + "  "
    hard.set("unit", "KiB")
    hard.text = str(target // KiB)
    return True


# -- host facts ----------------------------------------------------------------------------

def _host_facts(domain: Any, facts_path: str | None) -> Any:
    from . import host

    cache = read_facts_cache(facts_path) if facts_path else None
    paths = [domain.firmware.loader_path]
    paths += [i.rom.file for i in domain.interfaces] + [h.rom.file for h in domain.hostdevs]
    files = tuple(p for p in paths if p and os.path.isabs(p))
    dirs = tuple(cache.get("qemu_data_dirs") or ()) if cache else ()
    return host.collect(extra_files=files, probe_qemu=False, probe_libvirt=False,
                        override=cache, data_dirs=dirs)


def read_facts_cache(path: str) -> dict[str, Any] | None:
    """install-hook's host-facts JSON; None when there is none. Bad content is an error."""
    import json

    from .errors import InputError

    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FACTS_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise InputError(f"cannot read host facts cache {path}: {e.strerror or e}") from None
    if len(raw) > MAX_FACTS_BYTES:
        raise InputError(f"host facts cache {path} is too large")
    try:
        data = json.loads(raw)
    except ValueError:
        raise InputError(f"host facts cache {path} is not valid JSON; "
                         f"re-run memlock-guard install-hook") from None
    if not isinstance(data, dict):
        raise InputError(f"host facts cache {path} must hold a JSON object")
    return data


# -- the deadline ----------------------------------------------------------------------------

class _Deadline:
    """SIGALRM raises DeadlineExceeded in the main thread at ``seconds``; a watchdog
    thread ends the process with the on-error outcome ``WATCHDOG_GRACE`` later, for a
    step stuck in C code where the signal's exception cannot be raised."""

    def __init__(self, seconds: float, progress: _Progress, use_syslog: bool) -> None:
        self.seconds = seconds
        self.progress = progress
        self.use_syslog = use_syslog
        self._timer: threading.Timer | None = None
        self._old_handler: Any = None
        self._signal = threading.current_thread() is threading.main_thread()

    def arm(self) -> None:
        if self.seconds <= 0:
            return
        if self._signal:
            import signal

            def on_alarm(signum: int, frame: object) -> None:
                raise DeadlineExceeded()

            self._old_handler = signal.signal(signal.SIGALRM, on_alarm)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        self._timer = threading.Timer(self.seconds + WATCHDOG_GRACE, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def stop_alarm(self) -> None:
        if self._signal and self.seconds > 0:
            import signal

            signal.setitimer(signal.ITIMER_REAL, 0)

    def disarm(self) -> bool:
        """Stop both; False when the watchdog already fired (it owns the exit)."""
        if self._signal and self.seconds > 0:
            import signal

            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._old_handler or signal.SIG_DFL)
        if self._timer is not None:
            self._timer.cancel()
        with self.progress.lock:
            if self.progress.finished:
                return False
            self.progress.finished = True
            return True

    def _fire(self) -> None:
        with self.progress.lock:
            if self.progress.finished:
                return
            self.progress.finished = True
        code = EXIT_REFUSE if self.progress.on_error == "refuse" else EXIT_OK
        try:
            outcome = _failed(self.progress, f"step stuck past the hook's "
                                             f"{self.seconds:g} s deadline")
            code = outcome.exit_code
            from . import audit

            audit.log(self.progress.audit_log, outcome.record, use_syslog=self.use_syslog)
            os.write(2, (_one_paragraph(outcome.stderr) + "\n").encode("utf-8", "replace"))
        finally:
            os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
