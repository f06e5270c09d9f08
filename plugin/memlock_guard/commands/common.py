"""Options and plumbing shared by the verbs that judge a domain."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..accounting.report import Settings
    from ..domain import Domain
    from ..host.facts import HostFacts


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    pass


def add_judgement_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("accounting")
    g.add_argument("--mode", choices=("strict", "tolerant", "auto"), default=None,
                   help="strict: every mapped page is charged (Linux >= 6.2, iommufd); "
                        "tolerant: never-written ROM pages are not; auto: decide from this "
                        "host's kernel (default: auto, or the policy's mode)")
    g.add_argument("--zero-page-allowance", metavar="SIZE", default=None,
                   help="in tolerant mode, forgive at most this many zero-fill bytes "
                        "(e.g. 2MiB; default: all of them, as kernels before 6.2 do)")
    g.add_argument("--margin", metavar="SIZE", default=None,
                   help="added to the recommended hard_limit (default 64MiB)")
    g.add_argument("--libvirt-version", metavar="X.Y.Z", default=None,
                   help="judge with this libvirt's rules (default: the installed libvirt, "
                        "else the newest rules known)")
    g.add_argument("--kubevirt-version", metavar="VER", default=None,
                   help="KubeVirt version for its baseline and for --platform kubevirt: "
                        "1.0.0 ... 1.9.x or main; 1.8 means 1.8.0 (default: the policy's "
                        "<kubevirt-version>, else 1.9.0)")
    g.add_argument("--kubevirt-overhead-ratio", metavar="R", default=None,
                   help="the KubeVirt CR's additionalGuestMemoryOverheadRatio, e.g. 1.5 "
                        "(default: the policy's <kubevirt-overhead-ratio>, else unset)")
    g.add_argument("--platform", choices=("libvirt", "kubevirt"), default="libvirt",
                   help="whose rule sets QEMU's limit: libvirt's, or inside a KubeVirt "
                        "virt-launcher pod, virt-handler's and the pod's libvirt's "
                        "(default libvirt)")
    g.add_argument("--host-facts", metavar="FILE", default=None,
                   help="JSON file overriding what is read from this host (kernel_release, "
                        "rom_sizes, libvirt_version, ...; see README)")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="text for people (default), json for automation")


def settings_from_args(args: argparse.Namespace) -> Settings:
    from ..accounting.modes import Mode
    from ..accounting.report import DEFAULT_MARGIN, Settings
    from ..baselines import kubevirt
    from ..host.facts import parse_version
    from ..support.units import parse_size

    kv = str(kubevirt.parse_version(args.kubevirt_version or kubevirt.DEFAULT_VERSION,
                                    what="--kubevirt-version"))
    ratio = None if args.kubevirt_overhead_ratio is None else kubevirt.parse_ratio(
        args.kubevirt_overhead_ratio, what="--kubevirt-overhead-ratio")
    allowance = args.zero_page_allowance
    return Settings(
        mode=Mode(args.mode or "auto"),
        margin=DEFAULT_MARGIN if args.margin is None else parse_size(args.margin,
                                                                      what="--margin"),
        zero_page_allowance=None if allowance in (None, "unlimited")
        else parse_size(allowance, what="--zero-page-allowance"),
        libvirt_version=None if args.libvirt_version is None
        else parse_version(args.libvirt_version, what="--libvirt-version"),
        kubevirt_version=kv,
        kubevirt_overhead_ratio=ratio,
        platform=args.platform,
    )


def host_facts(args: argparse.Namespace, domain: Domain) -> HostFacts:
    """This host as it matters for ``domain``: its files, the IOMMU groups of its
    hostdevs, its emulator's devices, QEMU probed, libvirt-python's version;
    --host-facts wins."""
    from ..host import probe
    from ..host.facts import qemu_target

    override = probe.load_override(args.host_facts) if args.host_facts else None
    return probe.collect(extra_files=domain.named_files, probe_qemu=True,
                         libvirt_version=libvirt_library_version(), override=override,
                         pci_devices=domain.host_pci_devices,
                         qemu_targets=(qemu_target(domain.arch),))


def libvirt_library_version() -> tuple[int, int, int] | None:
    """The version of the installed libvirt-python's library; None without it."""
    try:
        import libvirt  # type: ignore[import-untyped]
    except ImportError:
        return None
    try:
        v = int(libvirt.getVersion())
    except Exception:
        return None
    return v // 1_000_000, (v // 1000) % 1000, v % 1000


def read_xml_arg(path: str) -> bytes:
    from ..support import xmlsafe

    if path == "-":
        return xmlsafe.read_limited(sys.stdin.buffer, what="domain XML on stdin")
    return xmlsafe.read_file(path, what="domain XML")
