"""memlock-guard uninstall-hook: remove what install-hook installed, and nothing else."""

from __future__ import annotations

import argparse
import os

HELP = "remove the libvirt qemu hook that install-hook installed (then restart libvirtd)"
DESCRIPTION = """\
Removes DIR/qemu.d/50-memlock-guard and DIR/qemu when, and only when, they carry
install-hook's marker line; a hook that memlock-guard did not write is left alone. A
top-level qemu script that 'install-hook --as-main-script --force' moved aside
(qemu.pre-memlock-guard) is put back. The host facts and decision caches go too. The policy file
and the audit log stay: they are the operator's. A hook that the memlock-guard .deb or
.rpm installed stays too, with its caches: the package manager removes it.

libvirt keeps running the hooks it found at start-up until it restarts, so restart
libvirtd (or virtqemud) afterwards.

examples:
  memlock-guard uninstall-hook && systemctl restart libvirtd
  memlock-guard uninstall-hook --hooks-dir /var/lib/openstack-helm/hooks

exit status: 0 (also when there was nothing to remove)."""


def configure(p: argparse.ArgumentParser) -> None:
    from ..support.defaults import DECISION_CACHE, FACTS_CACHE
    from .install_hook import DEFAULT_HOOKS_DIR

    p.add_argument("--hooks-dir", metavar="DIR", default=DEFAULT_HOOKS_DIR,
                   help=f"libvirt's hook directory (default {DEFAULT_HOOKS_DIR})")
    p.add_argument("--facts-cache", metavar="FILE", default=FACTS_CACHE,
                   help=f"the host facts cache to remove (default {FACTS_CACHE})")
    p.add_argument("--decision-cache", metavar="DIR", default=DECISION_CACHE,
                   help=f"the decision cache to empty and remove (default {DECISION_CACHE})")


def run(args: argparse.Namespace) -> int:
    from .install_hook import BACKUP_SUFFIX, DROP_IN, MAIN_SCRIPT, is_ours, packaged_by

    hooks_dir = os.path.abspath(args.hooks_dir)
    removed = 0
    packaged = False
    for rel in (DROP_IN, MAIN_SCRIPT):
        path = os.path.join(hooks_dir, rel)
        if not os.path.lexists(path):
            continue
        if not is_ours(path):
            print(f"left {path} alone: memlock-guard did not install it")
            continue
        owner = packaged_by(path)
        if owner:
            packaged = True
            print(f"left {path} alone: the {owner} package installed it; removing the "
                  f"package removes it")
            continue
        os.unlink(path)
        removed += 1
        print(f"removed {path}")
        backup = path + BACKUP_SUFFIX
        if rel == MAIN_SCRIPT and os.path.lexists(backup) and not os.path.lexists(path):
            os.rename(backup, path)
            print(f"restored {path} from {backup}")
    # The package's hook, when there is one, still reads the caches.
    if not packaged and args.facts_cache and os.path.exists(args.facts_cache):
        os.unlink(args.facts_cache)
        print(f"removed {args.facts_cache}")
    if not packaged and args.decision_cache and os.path.isdir(args.decision_cache):
        from ..hook.cache import clear

        clear(args.decision_cache)
        try:
            os.rmdir(args.decision_cache)
            print(f"removed {args.decision_cache}")
        except OSError:
            print(f"emptied {args.decision_cache} (it holds files memlock-guard did not write)")
    if removed:
        print("libvirt keeps the hooks it found at start-up: restart libvirtd (or "
              "virtqemud) now, e.g. 'systemctl restart libvirtd'.")
    elif not packaged:
        print(f"no memlock-guard hook in {hooks_dir}: nothing to remove")
    return 0
