"""Options and plumbing shared by the verbs that talk to libvirt (explain, check, apply,
watch): --connect, --policy, the domain selection, and how a domain gets judged."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from ..support.errors import InputError

if TYPE_CHECKING:
    from ..libvirtd.reconcile import Judge
    from ..policy.model import Policy

CONNECT_HELP = ("libvirt connection URI (default qemu:///system; e.g. qemu:///session, "
                "test:///default). Host facts (ROM files, kernel) are read on this "
                "machine, so run on the VM host itself")


POLICY_HELP = ("policy file (default: $MEMLOCK_GUARD_POLICY, else "
               "/etc/memlock-guard/policy.xml, else built-in defaults); a domain's "
               "<metadata><mg:policy> overrides it, and options given here override both")


def add_connect_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("libvirt and policy")
    g.add_argument("--connect", "-c", metavar="URI", default=None, help=CONNECT_HELP)
    g.add_argument("--policy", metavar="FILE", default=None, help=POLICY_HELP)


def add_selection(p: argparse.ArgumentParser, *, what: str) -> None:
    p.add_argument("domains", nargs="*", metavar="DOMAIN",
                   help=f"domain name, UUID or id to {what}")
    p.add_argument("--all", action="store_true",
                   help=f"{what} every defined domain")


def uri(args: argparse.Namespace) -> str:
    from ..libvirtd.client import DEFAULT_URI

    return str(args.connect or DEFAULT_URI)


def refuse_kubevirt(args: argparse.Namespace, verb: str) -> None:
    """The verbs that write <memtune> cannot serve KubeVirt: its session-mode libvirt
    refuses memtune."""
    if args.platform == "kubevirt":
        raise InputError(f"{verb} writes <memtune>, which KubeVirt's session-mode libvirt "
                         "refuses; use --platform libvirt")


def load_policy(args: argparse.Namespace) -> Policy:
    from ..policy import load as policy
    from ..policy import model as policy_model

    path, named = policy_model.policy_path(args.policy)
    return policy.load(path, named=named)


# Settings fields an option sets when given; None means "not given: the policy decides".
_OVERRIDABLE = ("mode", "margin", "zero_page_allowance", "libvirt_version",
                "kubevirt_version", "kubevirt_overhead_ratio")


def overrides(args: argparse.Namespace) -> tuple[tuple[str, Any], ...]:
    """The Settings fields given explicitly on the command line, parsed."""
    from .common import settings_from_args

    parsed = settings_from_args(args)
    given = {
        "mode": args.mode is not None,
        "margin": args.margin is not None,
        "zero_page_allowance": args.zero_page_allowance is not None,
        "libvirt_version": args.libvirt_version is not None,
        "kubevirt_version": args.kubevirt_version is not None,
        "kubevirt_overhead_ratio": args.kubevirt_overhead_ratio is not None,
    }
    out = [(k, getattr(parsed, k)) for k in _OVERRIDABLE if given[k]]
    out.append(("platform", parsed.platform))
    return tuple(out)


def make_judge(args: argparse.Namespace, conn: Any, policy: Policy | None = None) -> Judge:
    """Judge domains as the hook will: the policy, this host, the daemon's libvirt rules."""
    from ..host import probe as hostmod
    from ..libvirtd import client as lc
    from ..libvirtd.reconcile import Judge
    from ..policy import model as policy_model

    p = policy if policy is not None else load_policy(args)
    override = hostmod.load_override(args.host_facts) if args.host_facts else None
    facts = hostmod.collect(probe_qemu=True, override=override,
                            qemu_targets=hostmod.installed_targets())
    # The daemon's version sets the formula, not this client library's; a host-facts
    # file or --libvirt-version still wins.
    if override is None or "libvirt_version" not in override:
        facts = facts._replace(libvirt_version=lc.daemon_version(conn))
    probe = override is None or bool(override.get("probe_host", True))
    return Judge(policy=p, host=facts, overrides=overrides(args), probe_files=probe,
                 pm=policy_model.plugin_manager(p))


def selected(conn: Any, args: argparse.Namespace, *, persistent_only: bool) -> list[Any]:
    """The domains named on the command line, or every one with --all."""
    from ..libvirtd import client as lc

    if args.all and args.domains:
        raise InputError("give DOMAIN names or --all, not both")
    if args.all:
        return lc.all_domains(conn, persistent_only=persistent_only)
    if not args.domains:
        raise InputError("name at least one DOMAIN, or use --all")
    seen: dict[str, Any] = {}
    for name in args.domains:
        dom = lc.lookup(conn, name)
        seen.setdefault(dom.UUIDString(), dom)
    return list(seen.values())
