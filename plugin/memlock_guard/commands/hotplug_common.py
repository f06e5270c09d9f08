"""What attach-device and detach-device share: options, the run, text and JSON output."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from .common import add_judgement_options
from .libvirt_common import add_connect_options

if TYPE_CHECKING:
    from ..libvirtd.hotplug import Outcome


def configure(p: argparse.ArgumentParser, *, verb: str) -> None:
    p.add_argument("domain", metavar="DOMAIN", help="domain name, UUID or id")
    p.add_argument("file", metavar="FILE", help="XML file of one device, as for virsh "
                                                f"{verb}-device")
    g = p.add_argument_group("which definitions (as virsh; no flag: the running VM)")
    g.add_argument("--live", action="store_true", help="affect the running VM")
    g.add_argument("--config", action="store_true",
                   help="affect the persistent definition (the next start)")
    g.add_argument("--persistent", action="store_true",
                   help="--config, and --live too when the domain runs")
    g.add_argument("--current", action="store_true",
                   help="the running VM if it runs, else the persistent definition")
    p.add_argument("--dry-run", "-n", action="store_true",
                   help="print the plan (judgements and steps), change nothing")
    add_connect_options(p)
    add_judgement_options(p)


def run(args: argparse.Namespace, *, detach: bool) -> int:
    import json
    import os
    import stat

    from ..libvirtd import client as lc
    from ..libvirtd import hotplug
    from ..support import audit, xmlsafe
    from ..support.defaults import MAX_DEVICE_XML_BYTES
    from ..support.errors import InputError
    from .libvirt_common import load_policy, make_judge, refuse_kubevirt, uri

    refuse_kubevirt(args, "attach-device" if not detach else "detach-device")
    what = f"device XML {args.file}"
    try:
        st = os.stat(args.file)
    except OSError as e:
        raise InputError(f"cannot read {what}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{what} is not a regular file")
    device = hotplug.parse_device(
        xmlsafe.read_file(args.file, what=what, max_bytes=MAX_DEVICE_XML_BYTES), what=what)
    policy = load_policy(args)
    conn = lc.connect(uri(args))
    try:
        dom = lc.lookup(conn, args.domain)
        live, config = hotplug.targets(dom, live=args.live, config=args.config,
                                       current=args.current, persistent=args.persistent)
        judge = make_judge(args, conn, policy)

        def log(record: dict[str, Any]) -> None:
            audit.log(policy.audit_log, record)

        out = hotplug.run(dom, device, judge, live=live, config=config, detach=detach,
                          dry_run=args.dry_run, audit=log)
    finally:
        conn.close()
    if args.format == "json":
        print(json.dumps(to_dict(out), indent=2))
    else:
        print(to_text(out))
    if out.error is None:
        return 0
    import sys

    back = ("every limit raised was put back" if out.restored
            else "NOT every limit could be put back: see the steps above")
    raised = any(s.action == "raise-hard-limit" and s.status == "done" for s in out.steps)
    tail = f"; {back}" if raised else "; nothing was changed"
    print(f"memlock-guard: {out.verb} failed: {out.error}{tail}", file=sys.stderr)
    return 2


def to_dict(out: Outcome) -> dict[str, Any]:
    defs = []
    for j in out.judged:
        v = j.report.verdict
        defs.append({
            "definition": j.which,
            "device_found": j.found,
            "required_bytes": v.required, "mode": v.mode.value,
            "containers": j.report.ledger.containers,
            "limit_bytes": v.limit.bytes, "limit_source": v.limit.source,
            "verdict": v.fit.value,
            "recommended_hard_limit_bytes": v.recommended_hard_limit,
            "action": j.plan.action.value, "reason": j.plan.reason,
            "hard_limit_from_bytes": j.plan.current_hard_limit,
            "hard_limit_to_bytes": j.plan.new_hard_limit,
            "swap_hard_limit_from_bytes": j.swap_from,
            "swap_hard_limit_to_bytes": j.swap_to,
            "diff": j.edit.diff if j.edit is not None else "",
        })
    return {
        "domain": out.domain, "uuid": out.uuid, "device": out.device, "verb": out.verb,
        "live": out.live, "config": out.config, "dry_run": out.dry_run,
        "definitions": defs,
        "steps": [{"step": i, "action": s.action, "definition": s.definition,
                   "description": s.text, "from_bytes": s.from_bytes,
                   "to_bytes": s.to_bytes, "status": s.status, "error": s.error}
                  for i, s in enumerate(out.steps, 1)],
        "result": ("planned" if out.dry_run else "failed" if out.error else "done"),
        "error": out.error,
        "restored": out.restored,
    }


def to_text(out: Outcome) -> str:
    from ..support.units import human

    where = " and ".join(d for d, on in (("running VM", out.live),
                                         ("persistent definition", out.config)) if on)
    prep = "from" if out.verb == "detach" else "to"
    lines = [f"{out.domain}: {out.verb} {out.device} {prep} the {where}"
             + (" (dry run: nothing is changed)" if out.dry_run else "")]
    for j in out.judged:
        v = j.report.verdict
        with_ = "without" if out.verb == "detach" else "with"
        limit = "unlimited" if v.limit.bytes is None else human(v.limit.bytes)
        lines.append(f"  {j.which}: {with_} the device it needs {human(v.required)} "
                     f"({v.mode.value}, {j.report.ledger.containers} container(s)); "
                     f"QEMU gets {limit} ({v.limit.source})")
        lines.append(f"    {j.plan.action.value}: {j.plan.reason}")
        if j.edit is not None and j.edit.diff:
            lines += ["    " + line for line in j.edit.diff.rstrip("\n").splitlines()]
    for i, s in enumerate(out.steps, 1):
        status = "" if s.status == "planned" else f" ... {s.status}"
        error = f": {s.error}" if s.error else ""
        lines.append(f"  {i}. {s.text}{status}{error}")
    return "\n".join(lines)
