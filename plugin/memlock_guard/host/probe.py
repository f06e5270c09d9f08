"""Reading this host: sysfs, QEMU's ROM files, the inherited memlock limit, QEMU itself.

Cheap by default (a few stat() calls and sysfs reads) because the hook runs it on every
VM start; asking QEMU (``qemu -L help``, ``--version``) is opt-in for the CLI. Every
fact can be overridden from a JSON file (``--host-facts``), so that tests and reports
are reproducible.
"""

from __future__ import annotations

import json
import os
import re
import resource
from collections.abc import Iterable, Mapping
from typing import Any

from ..support.defaults import MAX_HOST_FACTS_BYTES
from ..support.errors import InputError
from . import sources as host_sources
from .facts import DEFAULT_DATA_DIRS, PROBED_DEVICES, HostFacts, parse_version

_ROM_SUFFIXES = host_sources.ROM_SUFFIXES


def collect(*, extra_files: Iterable[str] = (), probe_qemu: bool = False,
            libvirt_version: tuple[int, int, int] | None = None,
            override: Mapping[str, Any] | None = None,
            data_dirs: Iterable[str] = (), pci_devices: Iterable[str] = (),
            qemu_targets: Iterable[str] = ()) -> HostFacts:
    """Read this host; ``override`` (a parsed --host-facts file) wins over what is read.

    ``data_dirs`` are searched for ROM files before the default directories: the hook
    cannot afford ``qemu -L help`` on every start, so it passes what install-hook learned.

    ``pci_devices`` are host PCI addresses (0000:01:00.0) whose IOMMU groups to read.
    ``qemu_targets`` (with ``probe_qemu``) are the emulators, qemu-system-TARGET, to ask
    which display devices they have (host.facts.qemu_target gives a guest arch's).

    ``libvirt_version`` is the caller's to learn (the CLI asks libvirt-python, the
    reconciler the daemon, the hook install-hook's cache): this module never loads libvirt.

    With ``"probe_host": false`` in the override nothing is read from the host, so
    a report depends on the file and the built-in defaults alone.
    """
    probe_host = True if override is None else bool(override.get("probe_host", True))
    facts = HostFacts()
    prov: dict[str, str] = {}
    if probe_host:
        facts, prov = _probe(extra_files, probe_qemu, libvirt_version, tuple(data_dirs))
        if probe_qemu:
            probed = _qemu_devices(qemu_targets)
            if probed:
                facts = facts._replace(qemu_devices=probed)
                prov["qemu_devices"] = "host"
        devices = tuple(pci_devices)
        if devices:
            facts = facts._replace(iommu_groups=_iommu_groups(devices))
            prov["iommu_groups"] = "host"
    if override:
        facts = _apply_override(facts, override, prov)
    return facts._replace(provenance=tuple(sorted(prov.items())))


def load_override(path: str) -> dict[str, Any]:
    """A --host-facts file, parsed; InputError naming the file when it is bad."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_HOST_FACTS_BYTES + 1)
    except OSError as e:
        raise InputError(f"cannot read host facts {path}: {e.strerror or e}") from None
    if len(raw) > MAX_HOST_FACTS_BYTES:
        raise InputError(f"host facts file {path} is larger than "
                         f"{MAX_HOST_FACTS_BYTES // (1024 * 1024)} MiB")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"host facts file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise InputError(f"host facts file {path} must hold a JSON object")
    return data


def _probe(extra_files: Iterable[str], probe_qemu: bool,
           libvirt_version: tuple[int, int, int] | None,
           data_dirs: tuple[str, ...] = ()) -> tuple[HostFacts, dict[str, str]]:
    prov = {"kernel_release": "host", "rom_files": "host"}
    dirs = list(dict.fromkeys(data_dirs + DEFAULT_DATA_DIRS))
    qemu_version = None
    if probe_qemu:
        found, qemu_version = _qemu_probe()
        dirs = found + [d for d in dirs if d not in found]
        if qemu_version:
            prov["qemu_version"] = "host"
    dirs = [d for d in dirs if os.path.isdir(d)]
    if libvirt_version:
        prov["libvirt_version"] = "host"
    inherited = _inherited_memlock()
    prov["inherited_memlock"] = "host"
    thp = host_sources.thp_enabled()
    if thp is not None:
        prov["transparent_hugepage"] = "host"
    rom_files, missing = _rom_files(dirs, extra_files)
    facts = HostFacts(
        kernel_release=os.uname().release,
        vfio_type1_params=_module_params("vfio_iommu_type1"),
        iommufd_params=_module_params("iommufd"),
        iommufd_available=os.path.exists("/dev/iommu"),
        qemu_data_dirs=tuple(dirs),
        rom_files=rom_files,
        missing_files=missing,
        libvirt_version=libvirt_version,
        qemu_version=qemu_version,
        inherited_memlock=inherited,
        transparent_hugepage=thp,
    )
    return facts, prov


def _module_params(module: str) -> tuple[tuple[str, str], ...]:
    return tuple(host_sources.module_params(module))


def _rom_files(dirs: Iterable[str], extra: Iterable[str]
               ) -> tuple[tuple[tuple[str, int], ...], tuple[str, ...]]:
    """(name or path, size) of every ROM file, and the ``extra`` paths that do not exist."""
    sizes: dict[str, int] = {}
    for d in dirs:
        try:
            entries = os.scandir(d)
        except OSError:
            continue
        with entries:
            for e in entries:
                # First directory wins, as in QEMU's qemu_find_file() search order.
                if e.name.endswith(_ROM_SUFFIXES) and e.name not in sizes:
                    try:
                        sizes[e.name] = e.stat().st_size  # follows Debian's symlinks
                    except OSError:
                        continue
    found, missing = stat_files(extra)
    sizes.update(found)
    return tuple(sorted(sizes.items())), missing


def stat_files(paths: Iterable[str]) -> tuple[tuple[tuple[str, int], ...], tuple[str, ...]]:
    """(path, size) of each absolute path a domain names (loader, ``<rom file>``), and
    the paths that do not exist."""
    sizes: list[tuple[str, int]] = []
    missing: list[str] = []
    for path in paths:
        if path and os.path.isabs(path):
            try:
                sizes.append((path, os.stat(path).st_size))
            except (FileNotFoundError, NotADirectoryError):
                missing.append(path)
            except OSError:
                continue  # there, but not ours to read: QEMU may be able to
    return tuple(sizes), tuple(missing)


def _iommu_groups(addresses: Iterable[str]) -> tuple[tuple[str, int], ...]:
    """libvirt's virPCIDeviceAddressGetIOMMUGroupNum: the iommu_group link's name."""
    out = {}
    for addr in addresses:
        try:
            link = os.readlink(f"/sys/bus/pci/devices/{addr}/iommu_group")
            out[addr] = int(os.path.basename(link))
        except (OSError, ValueError):
            continue  # no such device, or no IOMMU: libvirt does not isolate it
    return tuple(sorted(out.items()))


EMULATOR_DIR = "/usr/bin"  # where Debian, Fedora and Ubuntu install qemu-system-*
RHEL_EMULATOR = "/usr/libexec/qemu-kvm"  # RHEL's only one, for the host's own arch


def emulator(target: str) -> str:
    return f"{EMULATOR_DIR}/qemu-system-{target}"


def installed_targets() -> tuple[str, ...]:
    """The QEMU targets whose qemu-system-TARGET is installed (``-microvm`` builds
    aside: libvirt does not run them)."""
    try:
        names = os.listdir(EMULATOR_DIR)
    except OSError:
        return ()
    return tuple(sorted(n.removeprefix("qemu-system-") for n in names
                        if n.startswith("qemu-system-") and "-" not in n[12:]
                        and os.access(os.path.join(EMULATOR_DIR, n), os.X_OK)))


def _qemu_devices(targets: Iterable[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``qemu-system-TARGET -device help`` (about 50 ms each), the PROBED_DEVICES in it."""
    import subprocess

    out = []
    for target in dict.fromkeys(targets):
        binary = emulator(target)
        if not os.access(binary, os.X_OK):
            continue
        try:
            text = subprocess.run([binary, "-device", "help"], capture_output=True,
                                  text=True, timeout=10, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        names = set(re.findall(r'^name "([^"]+)"', text, re.M))
        if names:  # an emulator that lists nothing told us nothing
            out.append((target, tuple(d for d in PROBED_DEVICES if d in names)))
    return tuple(sorted(out))


def _qemu_probe() -> tuple[list[str], tuple[int, int, int] | None]:
    import subprocess  # 4 ms to import: only the CLI probes QEMU, never the hook

    # The x86 emulator first, as before; on a host without one any other answers the
    # same for -L (the data directories are the build's, not the target's).
    others = [emulator(t) for t in installed_targets() if t != "x86_64"]
    for binary in (emulator("x86_64"), RHEL_EMULATOR, *others):
        if not os.access(binary, os.X_OK):
            continue
        dirs: list[str] = []
        version = None
        try:
            out = subprocess.run([binary, "-L", "help"], capture_output=True, text=True,
                                 timeout=5, check=False).stdout
            dirs = [os.path.normpath(line.strip()) for line in out.splitlines()
                    if line.strip().startswith("/")]
            out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                                 timeout=5, check=False).stdout
            m = re.search(r"version (\d+)\.(\d+)\.(\d+)", out)
            if m:
                version = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
        except (OSError, subprocess.SubprocessError):
            pass
        return dirs, version
    return [], None


def _inherited_memlock() -> int | None:
    """RLIMIT_MEMLOCK of the running libvirt daemon, which QEMU inherits; else our own."""
    found = host_sources.libvirtd_memlock()
    if found is not None:
        field = found[1]
        if field == "unlimited":
            return None
        if field.isdigit():
            return int(field)
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return None if soft == resource.RLIM_INFINITY else int(soft)


_OVERRIDE_KEYS = {
    "probe_host", "kernel_release", "vfio_iommu_type1", "iommufd", "iommufd_available",
    "qemu_data_dirs", "rom_sizes", "libvirt_version", "qemu_version",
    "inherited_memlock_bytes", "nvlink2_bridges", "transparent_hugepage", "iommu_groups",
    "qemu_devices",
}


def _apply_override(facts: HostFacts, data: Mapping[str, Any],
                    prov: dict[str, str]) -> HostFacts:
    unknown = sorted(set(data) - _OVERRIDE_KEYS)
    if unknown:
        raise InputError(f"host facts: unknown key {unknown[0]!r} "
                         f"(known: {', '.join(sorted(_OVERRIDE_KEYS))})")
    changes: dict[str, Any] = {}

    def mark(name: str) -> None:
        prov[name] = "override"

    if "kernel_release" in data:
        changes["kernel_release"] = _str(data["kernel_release"], "kernel_release")
        mark("kernel_release")
    for key, attr_name in (("vfio_iommu_type1", "vfio_type1_params"),
                           ("iommufd", "iommufd_params")):
        if key in data:
            changes[attr_name] = tuple(sorted(
                (str(k), str(v)) for k, v in _dict(data[key], key).items()))
            mark(attr_name)
    if "iommufd_available" in data:
        changes["iommufd_available"] = bool(data["iommufd_available"])
        mark("iommufd_available")
    if "qemu_data_dirs" in data:
        changes["qemu_data_dirs"] = tuple(_str(d, "qemu_data_dirs")
                                          for d in _list(data["qemu_data_dirs"], "qemu_data_dirs"))
    if "rom_sizes" in data:
        merged = dict(facts.rom_files)
        for name, size in _dict(data["rom_sizes"], "rom_sizes").items():
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InputError(f"host facts: rom_sizes[{name!r}] must be a byte count")
            merged[str(name)] = size
        changes["rom_files"] = tuple(sorted(merged.items()))
        mark("rom_files")
    for key in ("libvirt_version", "qemu_version"):
        if key in data:
            v = data[key]
            changes[key] = None if v is None else parse_version(_str(v, key), what=key)
            mark(key)
    if "inherited_memlock_bytes" in data:
        v = data["inherited_memlock_bytes"]
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise InputError("host facts: inherited_memlock_bytes must be bytes or null")
        changes["inherited_memlock"] = v
        mark("inherited_memlock")
    if "nvlink2_bridges" in data:
        changes["nvlink2_bridges"] = tuple(_str(a, "nvlink2_bridges")
                                           for a in _list(data["nvlink2_bridges"],
                                                          "nvlink2_bridges"))
        mark("nvlink2_bridges")
    if "transparent_hugepage" in data:
        v = data["transparent_hugepage"]
        if v is not None and v not in host_sources.THP_MODES:
            raise InputError("host facts: transparent_hugepage must be one of "
                             f"{', '.join(host_sources.THP_MODES)}, or null (unknown)")
        changes["transparent_hugepage"] = v
        mark("transparent_hugepage")
    if "iommu_groups" in data:
        groups = {}
        for addr, group in _dict(data["iommu_groups"], "iommu_groups").items():
            if not isinstance(group, int) or isinstance(group, bool) or group < 0:
                raise InputError(f"host facts: iommu_groups[{addr!r}] must be a group number")
            groups[str(addr)] = group
        changes["iommu_groups"] = tuple(sorted(groups.items()))
        mark("iommu_groups")
    if "qemu_devices" in data:
        per_target = {str(t): tuple(sorted({_str(d, "qemu_devices") for d in
                                            _list(v, f"qemu_devices[{t!r}]")}))
                      for t, v in _dict(data["qemu_devices"], "qemu_devices").items()}
        changes["qemu_devices"] = tuple(sorted(per_target.items()))
        mark("qemu_devices")
    return facts._replace(**changes)


def _str(v: Any, key: str) -> str:
    if not isinstance(v, str):
        raise InputError(f"host facts: {key} must be a string")
    return v


def _dict(v: Any, key: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise InputError(f"host facts: {key} must be an object")
    return v


def _list(v: Any, key: str) -> list[Any]:
    if not isinstance(v, list):
        raise InputError(f"host facts: {key} must be a list")
    return v
