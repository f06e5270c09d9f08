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
KSM_DIR = "/sys/kernel/mm/ksm"  # Documentation/admin-guide/mm/ksm.rst
# Transparent huge pages (Documentation/admin-guide/mm/transhuge.rst): the top-level
# mode, and since Linux 6.8 (multi-size THP) a per-size one, where "inherit" (the
# default for the PMD size) means the top-level mode.
THP_DIR = "/sys/kernel/mm/transparent_hugepage"
THP_MODES = ("always", "madvise", "never")


def read_sysfs(path: str) -> str | None:
    """A small sysfs/procfs value, stripped; None when it cannot be read."""
    try:
        with open(path) as f:
            return f.read(256).strip()
    except OSError:
        return None


def _selected(text: str | None) -> str | None:
    """The bracketed choice of a sysfs selector: "always [madvise] never" -> madvise."""
    if text is None:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def thp_sysfs() -> str:
    """The raw THP settings that thp_enabled() reads, for fingerprinting."""
    return "\n".join(f"{name}={read_sysfs(f'{THP_DIR}/{name}')}"
                     for name in ("enabled", "hpage_pmd_size", _pmd_dir() + "/enabled"))


def _pmd_dir() -> str:
    size = read_sysfs(f"{THP_DIR}/hpage_pmd_size")
    kib = int(size) // 1024 if size and size.isdigit() else 2048
    return f"hugepages-{kib}kB"


def thp_enabled() -> str | None:
    """always | madvise | never for PMD-sized THP of anonymous memory; None if unknown."""
    mode = _selected(read_sysfs(f"{THP_DIR}/{_pmd_dir()}/enabled"))
    if mode not in THP_MODES:  # "inherit", or a kernel before 6.8 (no per-size files)
        mode = _selected(read_sysfs(f"{THP_DIR}/enabled"))
    return mode if mode in THP_MODES else None


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


# -- running QEMUs (iommufd user accounting: hook/pins.py) -------------------------------

# libvirt's status XML of each running domain of qemu:///system: <domstatus pid=...>
# around the live <domain> (src/qemu/qemu_conf.c stateDir, virDomainObjSave).
QEMU_STATUS_DIR = "/run/libvirt/qemu"


def process_pins(pid: int, proc: str = "/proc") -> tuple[int | None, int | None]:
    """(VmPin, VmLck) of a process from /proc/PID/status, bytes; None when unreadable."""
    pin = lck = None
    try:
        with open(f"{proc}/{pid}/status", "rb") as f:
            for line in f.read(64 * 1024).splitlines():
                if line.startswith((b"VmPin:", b"VmLck:")):
                    parts = line.split()
                    value = int(parts[1]) * 1024 if len(parts) >= 2 and parts[1].isdigit() \
                        else None
                    if line.startswith(b"VmPin:"):
                        pin = value
                    else:
                        lck = value
    except OSError:
        return None, None
    return pin, lck


def is_guest_process(pid: int, name: str, proc: str = "/proc") -> bool:
    """Whether PID is still the QEMU libvirt started for ``name`` (its command line has
    ``-name guest=NAME``), not a process that reused the number."""
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            args = f.read(1024 * 1024).split(b"\0")
    except OSError:
        return False
    want = b"guest=" + name.replace(",", ",,").encode()
    return any(a == want or a.startswith(want + b",") for a in args)


def resolve_user(user: str | None) -> int | None:
    """A DAC label's user part as a uid: ``+64055``, or a name looked up in passwd."""
    if not user:
        return None
    if user.startswith("+"):
        return int(user[1:]) if user[1:].isascii() and user[1:].isdigit() else None
    try:
        import pwd

        return pwd.getpwnam(user).pw_uid
    except (KeyError, ImportError):
        return None
