"""Reading ``on-error`` and ``audit-log`` from a policy too broken to parse.

Standard library only: the hook calls this before it has read the domain XML (and
before lxml is loaded), so that a stuck stdin, or a domain XML too large to read, is
still answered with the operator's on-error and audit log rather than the built-in ones.
load.py calls it when a policy file does not parse or validate.
"""

from __future__ import annotations

import re

from ..support.defaults import MAX_POLICY_BYTES, SALVAGE_AUDIT_LOG, SALVAGE_ON_ERROR


def salvage(data: bytes) -> tuple[str | None, str | None]:
    """(on-error, audit-log) read textually from a policy's bytes.

    Only an unambiguous single value counts; anything else gives None (the defaults).
    """
    def one(pattern: bytes) -> str | None:
        found = set(re.findall(pattern, data[:MAX_POLICY_BYTES]))
        if len(found) != 1:
            return None
        return bytes(found.pop()).decode("ascii", "replace")

    return one(SALVAGE_ON_ERROR), one(SALVAGE_AUDIT_LOG)
