"""memlock-guard estimate: the itemised ledger and verdict for one domain XML."""

from __future__ import annotations

import argparse

from .common import add_judgement_options

HELP = "itemise what VFIO will pin for a domain XML and judge it against QEMU's limit"
DESCRIPTION = """\
Reads a libvirt domain XML (a file, or - for stdin) and prints one line per region
that QEMU will map for DMA: guest RAM, firmware, video RAM BARs, option ROMs, each
with its size, backing and how many VFIO containers pin it. Then the bytes the kernel
will charge in strict and tolerant accounting, the limit QEMU will really get (and
why), libvirt's and KubeVirt's baselines, and the verdict. When it is short, an
OpenStack Nova instance (<metadata><nova:instance>) gets remedies in Nova's terms (flavor
and image properties; Nova redefines the domain at every start), and --platform kubevirt
gets KubeVirt's (reservedOverhead, the overhead ratio, an upgrade), with their numbers.

--platform kubevirt judges the domain as in a virt-launcher pod of --kubevirt-version:
the pod's libvirt sets QEMU's limit to its own number, which must fit under the limit
virt-handler gives (above it QEMU cannot start). The KubeVirt sidecar
(hooks/kubevirt/onDefineDomain) does the same with the real VMI.

Nothing is changed and libvirt is not contacted; host facts (ROM file sizes, kernel,
libvirt version) are read from this machine unless --host-facts overrides them.

examples:
  memlock-guard estimate --xml examples/gpu-passthrough.xml
  virsh dumpxml vm1 | memlock-guard estimate --xml - --format json
  memlock-guard estimate --xml vm.xml --mode tolerant --libvirt-version 8.0.0
  memlock-guard estimate --xml dom.xml --platform kubevirt --kubevirt-version 1.8.2

exit status: 0 an estimate was made (whatever the verdict), 2 bad input."""


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--xml", required=True, metavar="PATH",
                   help="domain XML file, or - to read it from stdin")
    add_judgement_options(p)


def run(args: argparse.Namespace) -> int:
    from ..accounting.report import assess
    from ..domain import parse_domain
    from . import render
    from .common import host_facts, read_xml_arg, settings_from_args

    domain = parse_domain(read_xml_arg(args.xml))
    settings = settings_from_args(args)
    report = assess(domain, host_facts(args, domain), settings)
    print(render.to_json(report) if args.format == "json" else render.to_text(report))
    return 0
