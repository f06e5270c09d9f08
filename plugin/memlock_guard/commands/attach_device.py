"""memlock-guard attach-device: virsh attach-device, with the hard_limit raised first."""

from __future__ import annotations

import argparse

from . import hotplug_common

HELP = "attach a device like virsh attach-device, raising <memtune><hard_limit> first"
DESCRIPTION = """\
Does what 'virsh attach-device DOMAIN FILE' does, with the locked-memory limit made
right first. With <memtune><hard_limit> set, libvirt does not raise QEMU's memlock
limit when a device is hot-added (it uses the hard_limit as it is): a second GPU behind
a vIOMMU fails to attach, and memory hot-added beyond the limit makes QEMU abort. So:

1. each definition the flags touch (the running VM, the persistent definition) is
   judged with the device added, by apply's rules and the policy (hotplug-reserve
   included);
2. where it would be short, its hard_limit is raised to the recommended value: the
   live one through libvirt's memtune (libvirt's own adjust then raises the running
   QEMU's limit during the attach), the persistent one by redefining it as 'apply'
   does (swap_hard_limit kept >= hard_limit, <mga:applied> recorded, nothing else
   changed); a hard_limit is never lowered;
3. the device is attached with the same flags;
4. if the attach (or a raise) fails, every hard_limit raised is put back, and it says so.

Flags as virsh: --config (next start), --live (running VM), --persistent (--config, plus
--live when running), --current (whichever the domain has now); no flag: the running VM
only (virDomainAttachDevice). FILE is read with the hardened parser (at most 1 MiB, one
device element) and passed to libvirt as it is. Raises and restores go to the audit
log (op "attach-device", action "apply" / "restore").

examples:
  memlock-guard attach-device gpu-vm gpu2.xml --config --dry-run
  memlock-guard attach-device gpu-vm gpu2.xml --live --config
  memlock-guard attach-device db1 dimm-16g.xml --live --format json

exit status: 0 attached (or planned with --dry-run), 2 the attach or a raise failed
(the limits are put back), libvirt unreachable, or bad input."""


def configure(p: argparse.ArgumentParser) -> None:
    hotplug_common.configure(p, verb="attach")


def run(args: argparse.Namespace) -> int:
    return hotplug_common.run(args, detach=False)
