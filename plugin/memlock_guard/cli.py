"""``memlock-guard`` command line: argparse wiring only; each verb lives in commands/."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import __version__
from .commands import VERBS
from .commands.common import HelpFormatter
from .support.errors import MemlockGuardError

DESCRIPTION = """\
memlock-guard keeps VFIO/vDPA/NVMe passthrough VMs from failing on locked-memory
limits. It itemises every byte QEMU maps for DMA (guest RAM, ROMs, video RAM,
aliases, zero-page tails), compares that with the RLIMIT_MEMLOCK QEMU will really
get from libvirt, and reports, refuses or raises <memtune><hard_limit>.

OpenStack Nova instances are told what to change in their flavor or image (Nova
redefines them at every start). On KubeVirt, the hook sidecar
hooks/kubevirt/onDefineDomain judges each VMI inside its virt-launcher pod (README:
"OpenStack Nova", "KubeVirt").

Run 'memlock-guard VERB --help' for each verb's options and examples."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memlock-guard", description=DESCRIPTION,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name in VERBS:
        mod = importlib.import_module(f".commands.{name}", __package__)
        p = sub.add_parser(name.replace("_", "-"), help=mod.HELP, description=mod.DESCRIPTION,
                           formatter_class=HelpFormatter)
        mod.configure(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args))
    except MemlockGuardError as e:
        print(f"memlock-guard: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
