"""The hook's host facts: the cheap ones, plus install-hook's cache of the slow ones.

The libvirt and QEMU versions take a subprocess (or libvirt-python) to learn, and QEMU's
data directories ``qemu -L help``; the hook runs on every VM start, so install-hook
probes them once and writes them in the ``--host-facts`` JSON format
(commands/install_hook.py), and the hook reads them back here.
"""

from __future__ import annotations

import json
from typing import Any

from ..support.defaults import MAX_FACTS_CACHE_BYTES
from ..support.errors import InputError
from . import probe
from .facts import HostFacts


def hook_facts(files: tuple[str, ...], facts_path: str | None) -> HostFacts:
    """Cheap host facts (no QEMU or libvirt probe) plus the cache, for the hook."""
    cache = read(facts_path) if facts_path else None
    dirs = cache.get("qemu_data_dirs") if cache else None
    return probe.collect(extra_files=files, override=cache,
                         data_dirs=tuple(dirs) if isinstance(dirs, list) else ())


def read(path: str) -> dict[str, Any] | None:
    """The cached facts; None when there is no cache.

    Bad content is an error (and so follows the hook's on-error): the file is ours, and a
    decision on wrong versions would be silently wrong.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FACTS_CACHE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise InputError(f"cannot read host facts cache {path}: {e.strerror or e}") from None
    if len(raw) > MAX_FACTS_CACHE_BYTES:
        raise InputError(f"host facts cache {path} is too large")
    try:
        data = json.loads(raw)
    except ValueError:
        raise InputError(f"host facts cache {path} is not valid JSON; "
                         f"re-run memlock-guard install-hook") from None
    if not isinstance(data, dict):
        raise InputError(f"host facts cache {path} must hold a JSON object")
    return data
