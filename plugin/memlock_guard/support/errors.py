"""The exceptions that cross module boundaries.

Every error a user can cause is an ``InputError``: the CLI prints its message as one
line and exits 2; the hook hands it to the policy's ``on-error``.
"""


class MemlockGuardError(Exception):
    """Base class: anything memlock-guard raises on purpose."""


class InputError(MemlockGuardError, ValueError):
    """Bad input (domain XML, policy, host-facts file): the message names the problem."""


class PluginError(MemlockGuardError):
    """A third-party plugin raised or returned nonsense."""
