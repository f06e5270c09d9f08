#!/usr/bin/env python3
"""The estimate against a real QEMU over the whole matrix of old machine types and aarch64.

tests/e2e/test_real_qemu_compat_layouts.py checks a representative layout per rule in
the suite's time budget; this runs every layout measured for issue 15 (docs/sources.md
§10) and prints the table there: measured boot peak, estimate, difference (KiB), and the
ROM BARs the firmware was seen mapping. Each domain is defined as mg-matrix-..., booted
by ``measure --boot`` (paused start, BAR trace, sampling, destroy) and undefined.

Needs the libvirtd of tests/e2e/libvirt_env.sh (root, qemu:///system), with
qemu-system-arm, qemu-efi-aarch64 and OVMF (scripts/setup.sh --with-libvirtd). Takes the
e2e lock like the tests (unless MEMLOCK_GUARD_E2E_LOCK_HELD=1). About 8 minutes: the
OVMF and aarch64 layouts run under TCG.

    .venv/bin/python scripts/measure_matrix.py [--only SUBSTRING] [--json]

Exit status: 0 every layout bracketed (never below, at most max(2 MiB, 1 %) above, or
within its stated allowance), 1 otherwise, 2 when a layout could not be measured.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "plugin"))

from memlock_guard.accounting.engine import build_ledger  # noqa: E402
from memlock_guard.commands.common import libvirt_library_version  # noqa: E402
from memlock_guard.domain import parse_domain  # noqa: E402
from memlock_guard.host import probe  # noqa: E402
from memlock_guard.host.facts import qemu_target  # noqa: E402
from memlock_guard.measure import boot, compare, target  # noqa: E402
from memlock_guard.support.errors import MemlockGuardError  # noqa: E402

URI = "qemu:///system"
LOCK = "/run/memlock-guard-e2e.lock"
OVMF = ("<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>"
        "<nvram template='/usr/share/OVMF/OVMF_VARS.fd'>/var/lib/libvirt/qemu/nvram/"
        "{name}_VARS.fd</nvram>")
NO_ISA_EXTRAS = "<memballoon model='none'/><controller type='usb' model='none'/>"
CIRRUS_ARM = 4 * 1024 * 1024  # vram AAVMF never maps (estimators/video.py)


def vid(model: str) -> str:
    return f"<video><model type='{model}'/></video>"


def nic(model: str | None) -> str:
    return f"<interface type='user'>{f'<model type={model!r}/>' if model else ''}</interface>"


# (id, arch, machine, devices, firmware: seabios | ovmf | efi, allowance bytes)
X86 = [
    ("cirrus", "pc-i440fx-2.8", vid("cirrus")),
    ("cirrus", "pc-q35-2.8", vid("cirrus")),
    ("cirrus", "pc-i440fx-1.4", vid("cirrus")),
    ("cirrus-control", "pc-i440fx-2.9", vid("cirrus")),
    ("cirrus-control", "pc-q35-2.9", vid("cirrus")),
    ("e1000-82545em+i82550", "pc-i440fx-7.2", vid("none") + nic("e1000-82545em") + nic("i82550")),
    ("vga+e1000", "pc-i440fx-1.4", vid("vga") + nic("e1000")),
    ("5-nics", "pc-i440fx-1.4", vid("none") + "".join(
        nic(m) for m in ("virtio", "e1000", "rtl8139", "ne2k_pci", "pcnet"))),
    ("5-nics", "pc-i440fx-1.5", vid("none") + "".join(
        nic(m) for m in ("virtio", "e1000", "rtl8139", "ne2k_pci", "pcnet"))),
    ("vga+default-nic", "pc-i440fx-1.4", vid("vga") + nic(None)),
    ("virtio-transitional", "pc-i440fx-1.4", vid("none") + nic("virtio-transitional")),
    ("vmxnet3", "pc-i440fx-2.6", vid("none") + nic("vmxnet3")),
    ("vmxnet3", "pc-q35-2.6", vid("none") + nic("vmxnet3")),
    ("vmxnet3-control", "pc-i440fx-2.7", vid("none") + nic("vmxnet3")),
    ("eepro100", "pc-i440fx-7.2", vid("none") + nic("i82559er") + nic("i82557b") + nic("i82551")),
    ("i82559er", "pc-i440fx-1.4", vid("none") + nic("i82559er")),
    ("no-devices", "pc-i440fx-1.7", vid("none")),
    ("no-devices-control", "pc-i440fx-2.0", vid("none")),
    ("qxl", "pc-i440fx-4.2", vid("qxl")),
    ("qxl+qxl", "pc-i440fx-1.4", vid("qxl") + vid("qxl")),
    ("vmvga", "pc-i440fx-1.4", vid("vmvga")),
    ("bochs", "pc-i440fx-1.4", vid("bochs")),
    ("virtio-video+virtio", "pc-i440fx-2.6", vid("virtio") + nic("virtio")),
    ("virtio-video", "pc-i440fx-1.4", vid("virtio")),
    ("vga+e1000", "pc-q35-2.4", vid("vga") + nic("e1000")),
]
LAYOUTS: list[tuple[str, str, str, str, str, int]] = [
    (f"{i}", "x86_64", m, d, "seabios", 0) for i, m, d in X86]
LAYOUTS += [
    ("cirrus+e1000e (OVMF)", "x86_64", "pc-q35-2.8", vid("cirrus") + nic("e1000e"), "ovmf", 0),
    ("e1000-82545em+i82550 (OVMF)", "x86_64", "pc-i440fx-7.2",
     vid("none") + nic("e1000-82545em") + nic("i82550"), "ovmf", 0),
    ("e1000+virtio (OVMF)", "x86_64", "pc-i440fx-1.4",
     vid("none") + nic("e1000") + nic("virtio"), "ovmf", 0),
]
LAYOUTS += [(f"aarch64 {i}", "aarch64", "virt-7.2", d, "efi", a) for i, d, a in [
    ("virtio video", vid("virtio"), 0),
    ("virtio video x2", vid("virtio") + vid("virtio"), 0),
    ("virtio video + virtio", vid("virtio") + nic("virtio"), 0),
    ("cirrus", vid("cirrus"), CIRRUS_ARM),
    ("vga", vid("vga"), 0),
    ("vmvga", vid("vmvga"), 0),
    ("bochs", vid("bochs"), 0),
    ("ramfb", vid("ramfb"), 0),
    ("none", vid("none"), 0),
    ("virtio+e1000+e1000e+rtl8139", vid("none") + "".join(
        nic(m) for m in ("virtio", "e1000", "e1000e", "rtl8139")), 0),
    ("i82559er+ne2k_pci+pcnet+vmxnet3", vid("none") + "".join(
        nic(m) for m in ("i82559er", "ne2k_pci", "pcnet", "vmxnet3")), 0),
    ("default nic", vid("none") + nic(None), 0),
]]


def xml(name: str, arch: str, machine: str, devices: str, firmware: str) -> str:
    if arch == "aarch64":
        return (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>512</memory>"
                f"<vcpu>1</vcpu><os firmware='efi'><type arch='aarch64' machine='{machine}'>"
                "hvm</type></os><features><acpi/><gic version='2'/></features>"
                "<cpu mode='custom' match='exact'><model fallback='allow'>cortex-a57"
                "</model></cpu><on_reboot>destroy</on_reboot><devices>"
                f"<emulator>/usr/bin/qemu-system-aarch64</emulator>{devices}</devices>"
                "</domain>")
    kvm = os.access("/dev/kvm", os.R_OK | os.W_OK) and firmware != "ovmf"
    loader = OVMF.format(name=name) if firmware == "ovmf" else ""
    return (f"<domain type='{'kvm' if kvm else 'qemu'}'><name>{name}</name>"
            "<memory unit='MiB'>256</memory><vcpu>1</vcpu>"
            f"<os><type arch='x86_64' machine='{machine}'>hvm</type>{loader}</os>"
            "<features><acpi/></features><on_reboot>destroy</on_reboot><devices>"
            f"<emulator>/usr/bin/qemu-system-x86_64</emulator>{devices}</devices></domain>")


def virsh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True,
                          timeout=120, check=False)


def measure(layout: tuple[str, str, str, str, str, int]) -> dict[str, object]:
    what, arch, machine, devices, firmware, allowance = layout
    name = f"mg-matrix-{uuid.uuid4().hex[:8]}"
    path = Path(f"/tmp/{name}.xml")
    path.write_text(xml(name, arch, machine, devices, firmware))
    defined = virsh("define", str(path))
    path.unlink()
    if defined.returncode:
        return {"layout": what, "machine": machine, "error": defined.stderr.strip()}
    try:
        settle = 1.0 if firmware == "seabios" else 10.0
        m = boot.measure_boot(target.open_target(name, URI), settle=settle, timeout=60)
        domain = parse_domain(m.xml.encode())
        host = probe.collect(extra_files=domain.named_files, probe_qemu=True,
                             libvirt_version=libvirt_library_version(),
                             qemu_targets=(qemu_target(domain.arch),))
        estimate, _ = compare.estimated_non_ram(build_ledger(domain, host))
    except MemlockGuardError as e:
        return {"layout": what, "machine": machine, "error": str(e)}
    finally:
        virsh("destroy", name)
        virsh("undefine", name, "--nvram")
    diff = estimate - m.non_ram_bytes
    ok = 0 <= diff <= compare.tolerance(m.non_ram_bytes) + allowance
    return {"layout": what, "machine": machine, "firmware": firmware,
            "measured_kib": m.non_ram_bytes // 1024, "estimate_kib": estimate // 1024,
            "difference_kib": diff // 1024, "allowance_kib": allowance // 1024, "ok": ok,
            "roms": [f"{r.device} {r.size // 1024}" for r in m.roms],
            "warnings": list(m.warnings)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="run the layouts whose id or machine has this")
    ap.add_argument("--json", action="store_true", help="one JSON object per layout")
    args = ap.parse_args()
    if os.environ.get("MEMLOCK_GUARD_E2E_LOCK_HELD") != "1":
        fd = os.open(LOCK, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
    rows = [measure(lay) for lay in LAYOUTS if args.only in lay[0] + " " + lay[2]]
    worst = 0
    if not args.json:
        print("| layout | machine | meas | est | diff | ROM BARs seen |")
        print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            worst = 2
        elif not r["ok"]:
            worst = max(worst, 1)
        if args.json:
            print(json.dumps(r))
        elif "error" in r:
            print(f"| {r['layout']} | {r['machine']} | error: {r['error']} | | | |")
        else:
            flag = "" if r["ok"] else " **OUT**"
            print(f"| {r['layout']} | {r['machine']} | {r['measured_kib']} | "
                  f"{r['estimate_kib']} | {r['difference_kib']:+}{flag} | "
                  f"{', '.join(r['roms']) or '-'} |")  # type: ignore[arg-type]
    return worst


if __name__ == "__main__":
    sys.exit(main())
