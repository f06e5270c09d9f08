"""memlock-guard apply: raise the persistent <memtune><hard_limit> where a domain is short."""

from __future__ import annotations

import argparse
from typing import Any

from .common import add_judgement_options
from .libvirt_common import add_connect_options, add_selection

HELP = "raise <memtune><hard_limit> of short domains (persistent definition), with a diff"
DESCRIPTION = """\
For each named domain (or every persistent one with --all), judges the persistent
definition as 'check' does and, where it is short, raises <memtune><hard_limit> to the
recommended value: max(requirement, QEMU's footprint) + margin, rounded up to MiB. The
footprint matters because hard_limit is also the memory cgroup cap of the whole QEMU
process: a limit that only covers the pinned memory gets the VM OOM-killed.

It records what it did in <metadata><mga:applied xmlns:mga="urn:memlock-guard:applied:1"
value= unit= mode= version= ledger-digest=/>, so a later run recognises its own limit and
raises it again when devices or memory change. It never lowers a hard_limit, leaves one
that fits alone, and is idempotent: a second run changes nothing.

OpenStack Nova instances (domains with <metadata><nova:instance>) are skipped, with
action "skip" and the reason: Nova redefines the domain from its flavor and image at
every start, hard reboot, resize and migration, so the fix belongs in the flavor or
image ('memlock-guard explain DOMAIN' names it). --force raises them anyway, with a
warning, as a stopgap until the next hard reboot.

Only memtune and that metadata element change. The definition is read again right before
it is redefined; if someone edited it meanwhile, it is judged again on their version, so
their edit survives. Each change is shown as a unified diff and written to the audit log
(action "apply"). Running VMs keep their current limit until they are restarted.

examples:
  memlock-guard apply vm1 --dry-run
  memlock-guard apply --all
  memlock-guard apply vm1 --mode strict --margin 256MiB
  memlock-guard apply instance-0000002a --force     # a Nova instance, until its next hard reboot

exit status: 0 done (changed or not), 2 a domain could not be judged or redefined,
libvirt is unreachable, or bad input."""


def configure(p: argparse.ArgumentParser) -> None:
    add_selection(p, what="apply to")
    p.add_argument("--dry-run", "-n", action="store_true",
                   help="show the diff of what would change, change nothing")
    p.add_argument("--force", action="store_true",
                   help="raise OpenStack Nova instances too (skipped otherwise: Nova "
                        "redefines them at the next start or hard reboot), with a warning")
    add_connect_options(p)
    add_judgement_options(p)


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from ..libvirtd import client as lc
    from ..libvirtd.reconcile import raise_record, reconcile
    from ..support import audit
    from ..support.errors import MemlockGuardError
    from .libvirt_common import load_policy, make_judge, refuse_kubevirt, selected, uri

    refuse_kubevirt(args, "apply")
    policy = load_policy(args)
    conn = lc.connect(uri(args))
    results: list[dict[str, Any]] = []
    failed = False
    try:
        doms = selected(conn, args, persistent_only=True)
        judge = make_judge(args, conn, policy)
        for dom in doms:
            name = dom.name()
            try:
                out = reconcile(conn, dom, judge, dry_run=args.dry_run, force=args.force)
            except lc.LibvirtUnreachable:
                raise
            except MemlockGuardError as e:
                failed = True
                results.append({"domain": name, "uuid": dom.UUIDString(), "action": "error",
                                "error": str(e)})
                if args.format != "json":
                    print(f"{name}: error: {e}")
                continue
            if args.force and out.report is not None and out.report.domain.nova is not None \
                    and out.result is not None and out.result.changed:
                print(f"memlock-guard: warning: {name} is an OpenStack Nova instance: the "
                      f"hard_limit lasts only until Nova's next hard reboot, stop/start, "
                      f"resize or migration, which redefine the domain", file=sys.stderr)
            if out.written:
                audit.log(policy.audit_log, raise_record(out, op="apply"))
            doc = _doc(out, args.dry_run)
            results.append(doc)
            if args.format != "json":
                _print_text(doc)
    finally:
        conn.close()
    if args.format == "json":
        print(json.dumps(results, indent=2))
    return 2 if failed else 0


def _doc(out: Any, dry_run: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {"domain": out.name, "uuid": out.uuid, "action": out.action,
                           "written": out.written, "dry_run": dry_run}
    if out.result is None:
        doc["reason"] = out.skipped
        return doc
    plan = out.result.plan
    doc.update({
        "reason": plan.reason,
        "hard_limit_from_bytes": plan.current_hard_limit,
        "hard_limit_to_bytes": plan.new_hard_limit,
        "ledger_digest": plan.ledger_digest,
        "attempts": out.attempts,
        "diff": out.result.diff,
    })
    return doc


def _print_text(doc: dict[str, Any]) -> None:
    from ..support.units import human

    name = doc["domain"]
    if doc["action"] == "skip":
        print(f"{name}: skipped: {doc['reason']}")
        return
    if doc["action"] == "keep":
        print(f"{name}: unchanged: {doc['reason']}")
        return
    old = doc["hard_limit_from_bytes"]
    was = "not set" if old is None else human(old)
    verb = "would raise" if doc["dry_run"] else "raised"
    again = (f" (judged {doc['attempts']} times: the definition changed meanwhile)"
             if doc["attempts"] > 1 else "")
    print(f"{name}: {verb} hard_limit to {human(doc['hard_limit_to_bytes'])} "
          f"(was {was}): {doc['reason']}{again}")
    print(doc["diff"], end="")
