"""memlock-guard detach-device: virsh detach-device, reporting what remains pinned."""

from __future__ import annotations

import argparse

from . import hotplug_common

HELP = "detach a device like virsh detach-device; never lowers a hard_limit"
DESCRIPTION = """\
Does what 'virsh detach-device DOMAIN FILE' does, with the same flags, and first
judges each definition the flags touch with the device taken out, to say what it needs
then. It changes no limit: it never lowers a hard_limit (lowering the live one lowers
the memory cgroup cap under a running QEMU, and the room left is what re-attaching the
device needs). libvirt itself never lowers QEMU's memlock limit while a hard_limit is
set either.

Flags as virsh: --config, --live, --persistent, --current; no flag: the running VM.

examples:
  memlock-guard detach-device gpu-vm gpu2.xml --config
  memlock-guard detach-device gpu-vm gpu2.xml --live --dry-run --format json

exit status: 0 detached (or planned with --dry-run), 2 the detach failed, libvirt
unreachable, or bad input."""


def configure(p: argparse.ArgumentParser) -> None:
    hotplug_common.configure(p, verb="detach")


def run(args: argparse.Namespace) -> int:
    return hotplug_common.run(args, detach=True)
