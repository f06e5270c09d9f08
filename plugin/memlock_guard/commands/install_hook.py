"""memlock-guard install-hook: put the libvirt qemu hook in place, and cache slow host facts."""

from __future__ import annotations

import argparse
import os
import sys

from ..support.defaults import HOOK_DROP_IN, HOOK_MAIN_SCRIPT, HOOKS_DIR

HELP = "install the libvirt qemu hook that checks every VM start (then restart libvirtd)"
DESCRIPTION = """\
Installs hooks/qemu as /etc/libvirt/hooks/qemu.d/50-memlock-guard (libvirt >= 6.5 runs
every executable in qemu.d/, after a top-level 'qemu' script), with this Python's
absolute path written in: libvirt runs hooks with an empty environment.

From then on libvirt calls it for every domain operation:
  prepare begin    judge the domain; refuse the start (exit 1, one paragraph that
                   virsh shows) or warn, as the policy's <on-shortfall> says
  migrate begin    print the XML with <memtune><hard_limit> raised when it is short
  restore begin    (the policy's <adjust> chooses which of the two may)
  anything else    exit 0 at once

It also caches what is slow to learn on every start (libvirt and QEMU versions, QEMU's
data directories) in /var/lib/memlock-guard/host-facts.json. Run install-hook again
after upgrading libvirt or QEMU; it replaces its own files and nothing else. The hook
replays a decision from /var/lib/memlock-guard/decisions/ when the domain XML, the
policy, the host facts and memlock-guard itself are all unchanged.

libvirt looks for hooks only when the daemon starts, so restart libvirtd (or virtqemud
on modular deployments) afterwards.

Where the memlock-guard .deb or .rpm is installed, the package already put the hook in
qemu.d/ (and upgrades and removes it): install-hook then says so, refreshes the host
facts cache, and writes no second copy. --print writes the hook to stdout instead of
installing it; that is how the packages build theirs.

--as-main-script installs it as the top-level 'qemu' script instead, for setups that
only mount that one file (OpenStack-Helm). An existing 'qemu' that is not ours is never
replaced silently: install-hook stops, unless --force, which moves it to
qemu.pre-memlock-guard (uninstall-hook puts it back).

examples:
  memlock-guard install-hook && systemctl restart libvirtd
  memlock-guard install-hook --policy /etc/memlock-guard/gpu-hosts.xml
  memlock-guard install-hook --as-main-script --hooks-dir /var/lib/openstack-helm/hooks

exit status: 0 installed (or the package's hook is in place), 1 refused (a foreign hook is
in the way), 2 bad input."""

DEFAULT_HOOKS_DIR = HOOKS_DIR
DROP_IN = HOOK_DROP_IN
MAIN_SCRIPT = HOOK_MAIN_SCRIPT
BACKUP_SUFFIX = ".pre-memlock-guard"
# The template's first comment line; uninstall-hook removes only files that carry it.
MARKER = "# memlock-guard-hook: managed by"
MAX_SHEBANG = 255  # Linux BINPRM_BUF_SIZE (256) including the newline


def configure(p: argparse.ArgumentParser) -> None:
    from ..support.defaults import DECISION_CACHE, FACTS_CACHE

    p.add_argument("--hooks-dir", metavar="DIR", default=DEFAULT_HOOKS_DIR,
                   help=f"libvirt's hook directory (default {DEFAULT_HOOKS_DIR})")
    p.add_argument("--as-main-script", action="store_true",
                   help="install as DIR/qemu instead of DIR/qemu.d/50-memlock-guard")
    p.add_argument("--policy", metavar="PATH", default=None,
                   help="policy file the hook reads (default /etc/memlock-guard/policy.xml, "
                        "where a missing file means the built-in defaults; a named file "
                        "that goes missing is an error, handled by on-error)")
    p.add_argument("--force", action="store_true",
                   help="move a foreign top-level qemu hook aside to qemu.pre-memlock-guard "
                        "instead of stopping")
    p.add_argument("--facts-cache", metavar="FILE", default=FACTS_CACHE,
                   help=f"where to cache libvirt/QEMU versions and QEMU data directories "
                        f"(default {FACTS_CACHE})")
    p.add_argument("--decision-cache", metavar="DIR", default=DECISION_CACHE,
                   help="where the hook keeps decisions to replay while the domain XML, "
                        "policy and host facts are unchanged, or 'none' to decide from "
                        "scratch every time (default %(default)s)")
    p.add_argument("--python", metavar="PATH", default=sys.executable,
                   help="interpreter the hook runs with (default: this one, %(default)s)")
    p.add_argument("--print", action="store_true", dest="print_hook",
                   help="write the hook to stdout instead of installing it; nothing else "
                        "is touched (packages build their hook with this)")
    # For the packages' postinst: the facts cache (and an emptied decision cache) alone.
    p.add_argument("--facts-only", action="store_true", help=argparse.SUPPRESS)


def is_ours(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return MARKER.encode() in head


def packaged_by(path: str) -> str | None:
    """The system package that owns ``path``, e.g. 'memlock-guard (dpkg)', or None.

    The .deb and the .rpm install the hook themselves (a symlink in qemu.d/ to the
    rendered hooks/qemu) and upgrade and remove it with the package: install-hook must
    not write over it or beside it, nor uninstall-hook delete it. Asked of dpkg and rpm,
    whichever are installed; a tool that fails or is missing counts as 'not owned'.
    """
    import shutil
    import subprocess

    if not os.path.lexists(path):
        return None
    for tool, args in (("dpkg-query", ["-S"]), ("rpm", ["-qf", "--qf", "%{NAME}\\n"])):
        exe = shutil.which(tool)
        if exe is None:
            continue
        try:
            p = subprocess.run([exe, *args, path], capture_output=True, text=True,
                               timeout=30, check=False)
        except (OSError, subprocess.SubprocessError):
            continue
        if p.returncode != 0:
            continue
        for line in p.stdout.splitlines():
            # dpkg-query -S: "pkg1, pkg2: /path" (or "diversion by ..."); rpm: "name".
            name = line.rsplit(": ", 1)[0] if tool == "dpkg-query" else line
            if name.strip() and not name.startswith("diversion "):
                return f"{name.strip()} ({tool.split('-')[0]})"
    return None


def packaged_hook(hooks_dir: str) -> tuple[str, str] | None:
    """(path, owner) of a hook in ``hooks_dir`` that a system package installed."""
    for rel in (DROP_IN, MAIN_SCRIPT):
        path = os.path.join(hooks_dir, rel)
        owner = packaged_by(path) if is_ours(path) else None
        if owner:
            return path, owner
    return None


def render(python: str, policy_path: str | None, facts_path: str | None,
           cache_dir: str | None) -> str:
    """hooks/qemu with the interpreter, policy path, facts cache and decision cache."""
    from ..support.errors import InputError

    template = _template()
    shebang = f"#!{python} -IS"
    if len(shebang) >= MAX_SHEBANG:
        raise InputError(f"interpreter path {python!r} is too long for a #! line")
    if any(c in python for c in "\n\r\t "):
        raise InputError(f"interpreter path {python!r} contains whitespace, which a #! line "
                         f"cannot carry")
    lines = template.splitlines(keepends=True)
    settings = {"POLICY: str | None = ": repr(policy_path),
                "FACTS: str | None = ": repr(facts_path),
                "CACHE: str | None = ": repr(cache_dir)}
    found = {key: 0 for key in settings}
    out = [shebang + "\n"]
    assert lines[0].startswith("#!"), "hooks/qemu must start with a #! line"
    for line in lines[1:]:
        for key, value in settings.items():
            if line.startswith(key):
                line = f"{key}{value}\n"
                found[key] += 1
        out.append(line)
    assert all(n == 1 for n in found.values()), f"hooks/qemu settings lines: {found}"
    return "".join(out)


def _template() -> str:
    from ..support.defaults import package_file
    from ..support.errors import InputError

    path = package_file("qemu-hook", "hooks/qemu")
    if path is None:
        raise InputError("the hook template hooks/qemu is missing from this installation")
    with open(path) as f:
        return f.read()


def cache_host_facts(path: str) -> dict[str, object]:
    """Probe what the hook cannot afford per start and write it where the hook reads it."""
    import json

    from ..host import probe
    from ..support.files import write_atomically
    from .common import libvirt_library_version

    facts = probe.collect(probe_qemu=True, qemu_targets=probe.installed_targets())
    version = libvirt_library_version() or _daemon_version()
    data: dict[str, object] = {
        "libvirt_version": None if version is None else ".".join(map(str, version)),
        "qemu_version": (None if facts.qemu_version is None
                         else ".".join(map(str, facts.qemu_version))),
        "qemu_data_dirs": list(facts.qemu_data_dirs),
        "qemu_devices": {target: list(devices) for target, devices in facts.qemu_devices},
    }
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    write_atomically(path, json.dumps(data, indent=2) + "\n", 0o644)
    return data


def _daemon_version() -> tuple[int, int, int] | None:
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


def run(args: argparse.Namespace) -> int:
    from ..support import defaults
    from ..support.errors import InputError
    from ..support.files import write_atomically

    python = args.python
    if not os.path.isabs(python) or not os.access(python, os.X_OK):
        raise InputError(f"--python {python!r} is not an absolute path to an executable")
    policy_path = os.path.abspath(args.policy) if args.policy else None
    cache_dir = None if args.decision_cache in ("", "none") else \
        os.path.abspath(args.decision_cache)
    if args.print_hook:
        sys.stdout.write(render(python, policy_path, args.facts_cache, cache_dir))
        return 0
    from ..policy import load as pol

    hooks_dir = os.path.abspath(args.hooks_dir)
    packaged = None if args.facts_only else packaged_hook(hooks_dir)
    if args.facts_only or packaged:
        if packaged:
            print(f"{packaged[0]} was installed by the {packaged[1]} package, which "
                  f"upgrades and removes it: not writing a second copy (the package's hook "
                  f"reads {defaults.POLICY_PATH}; --policy, --python and --as-main-script do not "
                  f"apply to it)")
        _refresh_caches(args.facts_cache, cache_dir)
        return 0
    notes: list[str] = []
    shown_policy = policy_path or defaults.POLICY_PATH
    if os.path.exists(shown_policy):
        p = pol.load(shown_policy)  # a broken policy stops the install, with its line
        notes.append(f"policy {shown_policy}: mode {p.mode.value}, on-shortfall "
                     f"{p.on_shortfall.value}, on-error {p.on_error.value}, audit log "
                     f"{p.audit_log}")
    elif policy_path:
        notes.append(f"warning: policy {policy_path} does not exist yet; until it does, "
                     f"every start takes the on-error path (allow)")
    else:
        notes.append(f"no policy at {defaults.POLICY_PATH}: the built-in defaults apply (mode "
                     f"auto, on-shortfall refuse, on-error allow)")

    target = os.path.join(hooks_dir, MAIN_SCRIPT if args.as_main_script else DROP_IN)
    other = os.path.join(hooks_dir, DROP_IN if args.as_main_script else MAIN_SCRIPT)
    if os.path.lexists(target) and not is_ours(target):
        if not (args.force and args.as_main_script):
            print(f"memlock-guard: {target} exists and was not installed by memlock-guard; "
                  f"not replacing it. "
                  + ("Move it into qemu.d/ (libvirt >= 6.5 runs both), or pass --force to "
                     "move it aside." if args.as_main_script
                     else "Remove or rename it first."), file=sys.stderr)
            return 1
        backup = target + BACKUP_SUFFIX
        if os.path.lexists(backup):
            raise InputError(f"{backup} already exists; resolve it by hand first")
        os.rename(target, backup)
        notes.append(f"moved the existing {target} to {backup} (uninstall-hook restores it)")

    text = render(python, policy_path, args.facts_cache, cache_dir)
    os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
    write_atomically(target, text, 0o755)
    print(f"installed {target} (python {python})")
    if os.path.lexists(other) and is_ours(other):
        os.unlink(other)  # two copies would judge every start twice
        print(f"removed the earlier {other}")

    facts = _refresh_caches(args.facts_cache, cache_dir)
    version = facts.get("libvirt_version")
    if (not args.as_main_script and isinstance(version, str)
            and tuple(int(x) for x in version.split(".")[:2]) < (6, 5)):
        notes.append(f"warning: libvirt {version} does not run qemu.d/ scripts (6.5 and "
                     f"later do); use --as-main-script")
    for note in notes:
        print(note)
    print("libvirt looks for hooks only when it starts: restart libvirtd (or virtqemud) "
          "now, e.g. 'systemctl restart libvirtd'.")
    return 0


def _refresh_caches(facts_cache: str | None, cache_dir: str | None) -> dict[str, object]:
    """Empty the decision cache and write the host facts cache; the facts written."""
    if cache_dir:
        from ..hook.cache import clear

        clear(cache_dir)  # answers of an earlier engine or policy must not be replayed
    facts = cache_host_facts(facts_cache) if facts_cache else {}
    if facts:
        print(f"cached host facts in {facts_cache}: libvirt "
              f"{facts.get('libvirt_version') or 'unknown'}, QEMU "
              f"{facts.get('qemu_version') or 'unknown'}")
    return facts
