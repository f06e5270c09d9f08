"""The hook's decision cache: skip lxml, pluggy and the engine when nothing changed.

Measured (bench/hook_latency.py, docs/performance.md): a full decision costs about 5x
starting Python, and importing lxml and pluggy alone is 3.3x - 3.8x of it, so no amount
of tuning the engine reaches the 4x target; only not importing it does. libvirtd
starts the same unchanged VMs over and over (host reboots, autostart, stop/start
cycles), so most decisions repeat.

The key is a digest of everything a decision reads:
- the op, and the domain XML (for prepare without the root's ``id='N'``, which libvirt
  renumbers on every start; migrate/restore use the XML as is, since their output is
  derived from it);
- the policy file's path and bytes, and the host-facts cache's bytes;
- what host/probe.collect() reads cheaply: kernel release, vfio_iommu_type1 and iommufd
  parameters, /dev/iommu, the names and sizes of ROM files in QEMU's data directories,
  the RLIMIT_MEMLOCK that libvirtd passes on, and the transparent huge page settings;
- this package's version and the mtimes of its files (an edited engine is a new key).
The files a domain names (loader, ``<rom file>``) are known only after parsing, so an
entry records their sizes and a hit re-checks them.

Not cached: failures (they follow on-error every time, loudly), and anything under a
policy that allows third-party plugins (their code can change under us).

Stdlib only, and cheap to import: this runs before anything heavy is loaded. The
constants mirroring host/probe.py are checked against it by tests/unit/test_hook.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat

from ..host import sources as host_sources
from ..support.defaults import PACKAGE_DIR

try:  # CPython's own BLAKE2: importing hashlib would load OpenSSL first (3 ms a start)
    from _blake2 import blake2b
except ImportError:  # another interpreter
    from hashlib import blake2b

TYPE_CHECKING = False  # typing costs a few ms on the path this module exists to shorten
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

# What host/probe.py reads, from the same place (host/sources.py is standard library
# only).
DATA_DIRS = host_sources.DATA_DIRS
ROM_SUFFIXES = host_sources.ROM_SUFFIXES
MODULES = host_sources.MODULES
MAX_ENTRIES = 512
MAX_INPUT = 256 * 1024  # policy and facts files; bigger ones are not cached
FORMAT = b"memlock-guard decision cache 1"

_ROOT_ID = re.compile(rb"\A(\s*<domain\b[^>]*?)\s+id=(['\"])-?\d+\2")



def key(op: str, xml: bytes, policy_path: str, facts_path: str | None) -> str | None:
    """The digest for this decision, or None when it must not be cached."""
    try:
        policy = _small_file(policy_path)
        facts = _small_file(facts_path) if facts_path else None
    except _Unfingerprintable:
        return None
    if policy is not None and b"plugins" in policy:
        return None
    h = blake2b(FORMAT, digest_size=32)

    def part(label: str, value: bytes | str | None) -> None:
        data = b"\xff" if value is None else (value.encode() if isinstance(value, str)
                                               else value)
        h.update(label.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)

    part("code", _code_signature())
    part("op", op)
    part("xml", _ROOT_ID.sub(rb"\1", xml, count=1) if op == "prepare" else xml)
    part("policy-path", policy_path)
    part("policy", policy)
    part("facts", facts)
    part("kernel", os.uname().release)
    for module in MODULES:
        part(module, _module_params(module))
    part("iommufd", str(os.path.exists("/dev/iommu")))
    part("roms", _rom_listing(_data_dirs(facts)))
    part("memlock", _inherited_memlock())
    part("thp", host_sources.thp_sysfs())
    return h.hexdigest()


def lookup(cache_dir: str, digest: str) -> dict[str, Any] | None:
    """The stored outcome for ``digest`` if the files it depends on are unchanged."""
    path = os.path.join(cache_dir, digest + ".json")
    try:
        with open(path, "rb") as f:
            entry = json.loads(f.read(4 * 1024 * 1024))
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("key") != digest:
        return None
    files = entry.get("files")
    if not isinstance(files, dict) or any(_size(p) != s for p, s in files.items()):
        return None
    if not all(k in entry for k in ("exit_code", "stdout", "stderr", "record")):
        return None
    return entry


def store(cache_dir: str, digest: str, *, exit_code: int, stdout: str, stderr: str,
          record: dict[str, Any], files: Iterable[str], audit_log: str | None,
          on_error: str) -> None:
    """Save an outcome; best effort (a cache that cannot be written is just a miss).

    ``audit_log`` and ``on_error`` come from the policy, which a hit does not parse.
    """
    entry = {"key": digest, "exit_code": exit_code, "stdout": stdout, "stderr": stderr,
             "record": record, "files": {p: _size(p) for p in files},
             "audit_log": audit_log, "on_error": on_error}
    try:
        os.makedirs(cache_dir, mode=0o700, exist_ok=True)
        final = os.path.join(cache_dir, digest + ".json")
        tmp = f"{final}.tmp-{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(entry, f, separators=(",", ":"))
        os.replace(tmp, final)  # readers see the old entry or the whole new one
        _prune(cache_dir)
    except OSError:
        pass


def clear(cache_dir: str) -> int:
    """Remove every entry (install-hook does, so a new engine never meets old answers)."""
    removed = 0
    try:
        entries = list(os.scandir(cache_dir))
    except OSError:
        return 0
    for e in entries:
        if e.name.endswith(".json") or ".json.tmp-" in e.name:
            with contextlib.suppress(OSError):
                os.unlink(e.path)
                removed += 1
    return removed


def _prune(cache_dir: str) -> None:
    entries = [e for e in os.scandir(cache_dir) if e.name.endswith(".json")]
    if len(entries) <= MAX_ENTRIES:
        return
    entries.sort(key=lambda e: e.stat().st_mtime_ns)
    for e in entries[:len(entries) - MAX_ENTRIES]:
        with contextlib.suppress(OSError):
            os.unlink(e.path)


class _Unfingerprintable(Exception):
    """An input we cannot read cheaply and exactly; the full path reports the problem."""


def _small_file(path: str | None) -> bytes | None:
    """Bytes of a regular file, None when absent; _Unfingerprintable when unreadable,
    not a regular file, or too big."""
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError:
        raise _Unfingerprintable(path) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_INPUT:
            raise _Unfingerprintable(path)
        data = os.read(fd, MAX_INPUT + 1)
    except OSError:
        raise _Unfingerprintable(path) from None
    finally:
        os.close(fd)
    if len(data) > MAX_INPUT:
        raise _Unfingerprintable(path)
    return data


def _size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def _code_signature() -> str:
    from .. import __version__

    newest, count = 0, 0
    stack = [PACKAGE_DIR]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for e in entries:
            if e.is_dir(follow_symlinks=False) and not e.name.startswith((".", "__")):
                stack.append(e.path)
            elif e.name.endswith(".py"):
                count += 1
                newest = max(newest, e.stat().st_mtime_ns)
    return f"{__version__}:{count}:{newest}"


def _module_params(module: str) -> str:
    return "\n".join(f"{n}={v}" for n, v in host_sources.module_params(module))


def _data_dirs(facts: bytes | None) -> tuple[str, ...]:
    cached: list[str] = []
    if facts:
        try:
            value = json.loads(facts).get("qemu_data_dirs") or []
            cached = [d for d in value if isinstance(d, str)]
        except (ValueError, AttributeError):
            cached = []
    return tuple(dict.fromkeys([*cached, *DATA_DIRS]))


def _rom_listing(dirs: Iterable[str]) -> str:
    out = []
    for d in dirs:
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            continue
        out.append(f"[{d}]")
        for e in entries:
            if e.name.endswith(ROM_SUFFIXES):
                try:
                    out.append(f"{e.name}={e.stat().st_size}")
                except OSError:
                    out.append(f"{e.name}?")
    return "\n".join(out)


def _inherited_memlock() -> str:
    found = host_sources.libvirtd_memlock()
    if found is not None:
        return f"{found[0]}:{found[1]}"
    import resource

    return f"self:{resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]}"
