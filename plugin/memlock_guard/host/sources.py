"""Where host facts are read from, and the raw readers: standard library only.

Both probe.py (which builds HostFacts) and hook/cache.py (which fingerprints the
same inputs without importing the engine, on the hook's hot path) read through here,
so the two can never look at different files.
"""

from __future__ import annotations

import os

# Debian/Ubuntu build QEMU with --firmwarepath listing the first three; Fedora/RHEL ship
# everything under /usr/share/qemu (with symlinks into /usr/share/seabios, ipxe ...).
DATA_DIRS = (
    "/usr/share/qemu",
    "/usr/share/seabios",
    "/usr/lib/ipxe/qemu",
    "/usr/share/ipxe/qemu",
    "/usr/share/qemu-kvm",
)
ROM_SUFFIXES = (".bin", ".rom", ".fd")
# The daemon whose RLIMIT_MEMLOCK QEMU inherits: modular virtqemud, else libvirtd.
LIBVIRTD_PIDFILES = ("/run/libvirt/virtqemud.pid", "/run/libvirtd.pid",
                     "/var/run/libvirtd.pid")
MODULES = ("vfio_iommu_type1", "iommufd")


def module_params(module: str) -> list[tuple[str, str]]:
    """(name, value) of each readable parameter in /sys/module/MODULE/parameters."""
    base = f"/sys/module/{module}/parameters"
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return []
    out = []
    for n in names:
        try:
            with open(os.path.join(base, n)) as f:
                out.append((n, f.read(256).strip()))
        except OSError:
            continue
    return out


def libvirtd_memlock() -> tuple[str, str] | None:
    """(pidfile, soft "Max locked memory" field) of the running libvirt daemon."""
    for pidfile in LIBVIRTD_PIDFILES:
        try:
            with open(pidfile) as f:
                pid = int(f.read(32).strip())
            with open(f"/proc/{pid}/limits") as f:
                for line in f:
                    if line.startswith("Max locked memory"):
                        return pidfile, line.split()[3]
        except (OSError, ValueError, IndexError):
            continue
    return None
