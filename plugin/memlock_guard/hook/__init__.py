"""The libvirt qemu hook: ``hooks/qemu`` calls ``run()``.

- entry.py: the protocol (argv, stdin, exit status), the deadline, the decision cache;
  standard library only, so a replayed decision never loads lxml or the engine.
- outcome.py: what the hook answers (``HookAnswer``) and the on-error outcome, shared by
  the entry point and the decision without either importing the other's weight.
- decision.py: the decision proper (policy, domain, engine, the refusal paragraph).
- cache.py: decisions replayed while domain XML, policy and host facts are unchanged.
- pins.py: under iommufd user accounting, what the other running QEMUs of the uid pin
  (libvirt's status files and /proc; the cold path only).

``run`` and ``main`` are re-exported here: hooks/qemu scripts written by any
install-hook import ``memlock_guard.hook.run``.
"""

from .entry import main, run

__all__ = ["main", "run"]
