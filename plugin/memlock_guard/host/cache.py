"""install-hook's host-facts cache: what the hook cannot afford to learn on every start.

The libvirt and QEMU versions take a subprocess (or libvirt-python) to learn, and QEMU's
data directories ``qemu -L help``; the hook runs on every VM start, so install-hook (and
the package's postinst) probe them once and write them here, in the ``--host-facts``
JSON format, and the hook reads them back (``hook_facts``).
"""

from __future__ import annotations

import json
import os
from typing import Any

from ..support.defaults import MAX_FACTS_CACHE_BYTES
from ..support.errors import InputError
from ..support.files import write_atomically
from . import facts as hostmod


def hook_facts(files: tuple[str, ...], facts_path: str | None) -> hostmod.HostFacts:
    """Cheap host facts (no QEMU or libvirt probe) plus the cache, for the hook."""
    cache = read(facts_path) if facts_path else None
    dirs = cache.get("qemu_data_dirs") if cache else None
    return hostmod.collect(extra_files=files, probe_qemu=False, probe_libvirt=False,
                           override=cache,
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


def write(path: str) -> dict[str, object]:
    """Probe what the hook cannot afford per start and write it where the hook reads it."""
    facts = hostmod.collect(probe_qemu=True, probe_libvirt=True)
    version = facts.libvirt_version or daemon_version()
    data: dict[str, object] = {
        "libvirt_version": None if version is None else ".".join(map(str, version)),
        "qemu_version": (None if facts.qemu_version is None
                         else ".".join(map(str, facts.qemu_version))),
        "qemu_data_dirs": list(facts.qemu_data_dirs),
    }
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    write_atomically(path, json.dumps(data, indent=2) + "\n", 0o644)
    return data


def daemon_version() -> tuple[int, int, int] | None:
    """libvirt's version from its daemons, when libvirt-python is not installed."""
    import re
    import shutil
    import subprocess

    for daemon in ("virtqemud", "libvirtd"):
        exe = shutil.which(daemon, path="/usr/sbin:/usr/bin:/sbin:/bin")
        if not exe:
            continue
        try:
            out = subprocess.run([exe, "--version"], capture_output=True, text=True,
                                 timeout=10, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        m = re.search(r"(\d+)\.(\d+)\.(\d+)", out)
        if m:
            return int(m.group(1)), int(m.group(2)), int(m.group(3))
    return None
