"""memlock-guard watch: the reconciler daemon (packaging/systemd/memlock-guard-watch.service)."""

from __future__ import annotations

import argparse

from .common import add_judgement_options
from .libvirt_common import add_connect_options

HELP = "reconciler: raise hard_limits as soon as domains are defined or changed"
DESCRIPTION = """\
Runs until stopped (SIGTERM/SIGINT), and applies the rules of 'apply' to every
persistent domain:
  - at start, after every reconnect, and every --resync-interval seconds;
  - whenever libvirt reports a domain defined or redefined (virsh define, virsh edit),
    a device added or removed, a metadata change (a per-domain policy set with
    virsh metadata), or a VM stopped (edits made while it ran take effect then).

So 'virsh define' then 'virsh start' just works: by the time the VM starts, its
<memtune><hard_limit> covers what VFIO will pin, and the hook lets it through.

OpenStack Nova instances (<metadata><nova:instance>) are judged but not raised: Nova
redefines them from the flavor and image right before every start, a race no reconciler
wins, and the raise would not outlive the next hard reboot. A short one is logged with
that reason; the fix is in the flavor or image ('memlock-guard explain'). --force raises
them anyway, with a warning.

If libvirtd goes away (restart, upgrade), it reconnects with exponential backoff and
jitter, then resyncs, so domains defined meanwhile are handled too. When the policy
file changes, it is re-read and every domain is judged again. Each raise is one JSON
line in the policy's audit log (op "watch", action "apply"); progress and errors go to
stderr (the journal under systemd).

examples:
  memlock-guard watch
  memlock-guard watch --dry-run --resync-interval 60 -v
  systemctl enable --now memlock-guard-watch

exit status: 0 stopped by a signal, 2 bad options, an unusable policy at start, or a
libvirt URI that can never work (authentication refused, unknown driver)."""


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", "-n", action="store_true",
                   help="log (and audit, as action would-apply) what would be raised; "
                        "change nothing")
    p.add_argument("--resync-interval", metavar="SECONDS", type=float, default=300.0,
                   help="also judge every domain this often, for changes libvirt sends no "
                        "event for (virsh attach-device --config); 0 turns it off "
                        "(default 300)")
    p.add_argument("--match", metavar="GLOB", default="*",
                   help="only domains whose name matches this shell pattern, e.g. 'gpu-*' "
                        "(default: every domain)")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="log every judgement, not only raises and errors")
    p.add_argument("--force", action="store_true",
                   help="raise OpenStack Nova instances too (skipped otherwise: Nova "
                        "redefines them at the next start or hard reboot), with a warning")
    add_connect_options(p)
    add_judgement_options(p)


def run(args: argparse.Namespace) -> int:
    import logging
    import signal
    import sys
    import threading

    from ..libvirtd.watch import PolicySource, Watcher
    from ..policy import model as policy_model
    from ..support.errors import InputError
    from .libvirt_common import make_judge, refuse_kubevirt, uri

    refuse_kubevirt(args, "watch")
    if args.resync_interval < 0:
        raise InputError("--resync-interval must be 0 (off) or a number of seconds")
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if args.verbose
                        else logging.INFO, format="memlock-guard watch: %(message)s")
    path, named = policy_model.policy_path(args.policy)
    source = PolicySource(path, named)  # an unusable policy at start: exit 2 at once
    # Parse the judgement options and the host-facts file now, so a typo fails at once
    # (exit 2) instead of at every reconnect.
    from ..host import probe as hostmod
    from .libvirt_common import overrides

    overrides(args)
    if args.host_facts:
        hostmod.load_override(args.host_facts)

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        logging.getLogger("memlock_guard.libvirtd.watch").info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    watcher = Watcher(uri(args), source, lambda conn, pol: make_judge(args, conn, pol),
                      dry_run=args.dry_run, resync_interval=args.resync_interval,
                      match=args.match, force=args.force)
    return watcher.run(stop)
