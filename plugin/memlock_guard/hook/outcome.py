"""What the hook answers libvirt, and the on-error answer when it cannot decide.

Shared by the entry point (entry.py: protocol, deadline, decision cache) and the
decision (decision.py: policy, engine, paragraph), so that neither imports the other.
Standard library only, and light: the cached and the failure paths build a
``HookAnswer`` without loading lxml, pluggy or the engine, and ``failed()`` must work
when the failure is that one of those could not even be imported.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs a few ms on the hook's path
if TYPE_CHECKING:
    from typing import Any

# libvirt aborts the operation on any non-zero exit status and shows our stderr.
EXIT_OK = 0
EXIT_REFUSE = 1


class DeadlineExceeded(BaseException):
    """Raised by SIGALRM in whatever step is running. A BaseException, like
    KeyboardInterrupt, so that no ``except Exception`` on the way (the engine's guard
    around third-party plugins, a plugin's own retry loop) can swallow it and keep
    the step going until the watchdog has to kill the process."""


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


class HookAnswer:
    """The exit status, what goes to stdout (a replacement XML for migrate and restore)
    and stderr (one paragraph), and the audit record. Plain slots, not a dataclass or a
    NamedTuple, whose imports the cached path cannot afford."""

    __slots__ = ("cacheable", "exit_code", "files", "record", "stderr", "stdout")

    def __init__(self, exit_code: int, record: dict[str, Any], stdout: str = "",
                 stderr: str = "", *, cacheable: bool = False,
                 files: tuple[str, ...] = ()) -> None:
        self.exit_code = exit_code
        self.record = record
        self.stdout = stdout
        self.stderr = stderr
        # A judged decision (not an on-error answer) that may be replayed from the cache.
        self.cacheable = cacheable
        # Files the decision read whose sizes matter (loader, <rom file>), for the cache.
        self.files = files


def failed(progress: Progress, why: str, *, record: dict[str, Any] | None = None) -> HookAnswer:
    """The on-error answer: allow (loudly) or refuse, as the policy says.

    ``record`` is the audit record of a judgement that was made but cannot be trusted
    (a plugin left out); it is marked ``verdict: error``. Without one, a record is made
    from what ``progress`` knows.
    """
    from ..support import audit

    refuse = progress.on_error == "refuse"
    action = "refuse" if refuse else ("allow" if progress.op == "prepare" else "keep")
    if record is not None:
        record = {**record, "action": action, "policy": progress.policy_origin,
                  "error": why, "verdict": "error"}
    else:
        record = audit.entry(op=progress.op, domain=progress.domain, uuid=progress.uuid,
                             verdict="error", action=action, policy=progress.policy_origin,
                             error=why)
    if refuse:
        msg = (f"memlock-guard could not check domain {progress.domain!r} ({why}); "
               f"the policy's on-error is refuse, so it is refused. Fix the problem, or set "
               f"<on-error>allow</on-error> in the policy to let starts through meanwhile.")
        return HookAnswer(EXIT_REFUSE, record, "", msg)
    msg = (f"memlock-guard could not check domain {progress.domain!r} ({why}); "
           f"letting it through unchecked because the policy's on-error is allow.")
    return HookAnswer(EXIT_OK, record, "", msg)


def describe(e: BaseException, deadline: float) -> str:
    """Why a decision failed, in one line for stderr and the audit log."""
    from ..support.errors import MemlockGuardError

    if isinstance(e, DeadlineExceeded):
        return f"no decision within the hook's {deadline:g} s deadline"
    if isinstance(e, MemlockGuardError):
        return str(e)
    return f"internal error: {type(e).__name__}: {str(e)[:300]}"


def one_paragraph(text: str) -> str:
    """One line for virsh's error message. Names and addresses come from the domain XML,
    so control characters (terminal escapes) are replaced, not passed to the terminal."""
    return "".join(c if c.isprintable() else "?" for c in " ".join(text.split()))
