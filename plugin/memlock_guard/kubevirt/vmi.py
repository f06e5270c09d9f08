"""The sidecar's ``--vmi`` argument: a VirtualMachineInstance as JSON, read as hostile input.

virt-launcher sends ``json.Marshal(vmi)`` (pkg/hooks/manager.go OnDefineDomain): the whole
object, metadata and status included, compact. The sidecar shim checks that it
unmarshals into a v1.VirtualMachineInstance before it runs us (cmd/sidecars/
sidecar_shim.go runOnDefineDomain), but a direct invocation can pass anything, so:
- at most MAX_VMI_JSON_BYTES, nested at most MAX_JSON_DEPTH levels;
- JSON as Go reads it: no NaN or Infinity, an object at the top;
- every field memlock-guard reads has the type KubeVirt's API gives it, or the whole
  document is refused (Go's json.Unmarshal refuses it too); ``kind`` and ``apiVersion``
  are not needed (whether virt-launcher's JSON carries them was not checked).
Quantities are Kubernetes resource.Quantity strings (``16Gi``, ``1500M``, ``2e9``) or
numbers; ``Value()`` rounds them up to whole bytes, and so does ``quantity``.
"""

from __future__ import annotations

import json
import re
from fractions import Fraction
from typing import Any, NamedTuple

from ..baselines.kubevirt import Vmi
from ..support.defaults import MAX_JSON_DEPTH, MAX_VMI_JSON_BYTES
from ..support.errors import InputError

_SUFFIX = {
    "": Fraction(1), "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000),
    "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9), "T": Fraction(10**12),
    "P": Fraction(10**15), "E": Fraction(10**18),
    "Ki": Fraction(2**10), "Mi": Fraction(2**20), "Gi": Fraction(2**30), "Ti": Fraction(2**40),
    "Pi": Fraction(2**50), "Ei": Fraction(2**60),
}
# apimachinery's quantity grammar: a signed decimal, then a binary or decimal SI suffix
# or a decimal exponent. Lengths bounded here so a hostile value stays cheap.
_QUANTITY = re.compile(r"([+-]?)(\d{1,30}(?:\.\d{0,30})?|\.\d{1,30})"
                       r"(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d{1,2})?")
_MAX = (1 << 63) - 1  # an int64, as Quantity.Value() returns


class VmiDocument(NamedTuple):
    vmi: Vmi
    launcher_image: str | None  # status.launcherContainerImageVersion
    sidecars: int  # entries of the hooks.kubevirt.io/hookSidecars annotation


def quantity(value: object, *, what: str) -> Fraction:
    """A resource.Quantity, exactly; InputError when it is not one."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InputError(f"{what} is not a quantity")
    text = repr(value) if isinstance(value, float) else str(value)
    m = _QUANTITY.fullmatch(text.strip())
    if not m:
        raise InputError(f"{what} {text[:40]!r} is not a quantity like 16Gi or 4096Mi")
    sign, number, suffix = m.groups()
    exact = Fraction(number if not number.startswith(".") else "0" + number)
    if suffix and suffix[0] in "eE":
        exact *= Fraction(10) ** int(suffix[1:])
    else:
        exact *= _SUFFIX[suffix or ""]
    if sign == "-" and exact:
        raise InputError(f"{what} is negative")
    if exact > _MAX:
        raise InputError(f"{what} is larger than Kubernetes can hold")
    return exact


def to_bytes(q: Fraction) -> int:
    """Quantity.Value(): rounded up to a whole number."""
    return -(-q.numerator // q.denominator)


def load(data: bytes | str, *, node_arch: str = "amd64") -> VmiDocument:
    """The VMI of ``--vmi``; InputError (one line, naming the field) on anything wrong."""
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    if len(raw) > MAX_VMI_JSON_BYTES:
        raise InputError(f"--vmi is larger than {MAX_VMI_JSON_BYTES // 1024} KiB")
    if not raw.strip():
        raise InputError("--vmi is empty")
    try:
        doc = json.loads(raw, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise InputError(f"--vmi is not valid JSON: {e.msg} (line {e.lineno}, column "
                         f"{e.colno})") from None
    except RecursionError:
        raise InputError(f"--vmi nests more than {MAX_JSON_DEPTH} levels deep") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"--vmi is not valid JSON: {str(e)[:120]}") from None
    _check_depth(doc)
    if not isinstance(doc, dict):
        raise InputError("--vmi is not a JSON object (a VirtualMachineInstance)")
    return _document(doc, node_arch)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_depth(doc: object) -> None:
    stack: list[tuple[object, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise InputError(f"--vmi nests more than {MAX_JSON_DEPTH} levels deep")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def _obj(parent: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(f"--vmi {path}.{key} is not an object")
    return value


def _list(parent: dict[str, Any], key: str, path: str) -> list[dict[str, Any]]:
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
        raise InputError(f"--vmi {path}.{key} is not a list of objects")
    return value


def _str(parent: dict[str, Any], key: str, path: str) -> str | None:
    value = parent.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(f"--vmi {path}.{key} is not a string")
    return value


def _int(parent: dict[str, Any], key: str, path: str) -> int:
    value = parent.get(key, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 32:
        raise InputError(f"--vmi {path}.{key} is not a count")
    return value


def _qty(parent: dict[str, Any], key: str, path: str) -> Fraction | None:
    value = parent.get(key)
    return None if value is None else quantity(value, what=f"--vmi {path}.{key}")


def _document(doc: dict[str, Any], node_arch: str) -> VmiDocument:
    meta = _obj(doc, "metadata", "")
    spec = _obj(doc, "spec", "")
    status = _obj(doc, "status", "")
    dom = _obj(spec, "domain", "spec")
    if not dom:
        raise InputError("--vmi has no spec.domain: not a VirtualMachineInstance")
    res = _obj(dom, "resources", "spec.domain")
    req = _obj(res, "requests", "spec.domain.resources")
    lim = _obj(res, "limits", "spec.domain.resources")
    mem = _obj(dom, "memory", "spec.domain")
    devices = _obj(dom, "devices", "spec.domain")
    reserved = _obj(mem, "reservedOverhead", "spec.domain.memory")
    launch = _obj(dom, "launchSecurity", "spec.domain")
    interfaces = _list(devices, "interfaces", "spec.domain.devices")
    tpm = devices.get("tpm")
    if tpm is not None and not isinstance(tpm, dict):
        raise InputError("--vmi spec.domain.devices.tpm is not an object")
    cpu = dom.get("cpu")
    if cpu is not None and not isinstance(cpu, dict):
        raise InputError("--vmi spec.domain.cpu is not an object")
    autoattach = devices.get("autoattachGraphicsDevice")
    if autoattach is not None and not isinstance(autoattach, bool):
        raise InputError("--vmi spec.domain.devices.autoattachGraphicsDevice is not a boolean")

    req_mem = _qty(req, "memory", "spec.domain.resources.requests")
    lim_mem = _qty(lim, "memory", "spec.domain.resources.limits")
    req_cpu = _qty(req, "cpu", "spec.domain.resources.requests")
    lim_cpu = _qty(lim, "cpu", "spec.domain.resources.limits")
    guest = _qty(mem, "guest", "spec.domain.memory")
    max_guest = _qty(mem, "maxGuest", "spec.domain.memory")
    added = _qty(reserved, "addedOverhead", "spec.domain.memory.reservedOverhead")
    migration = _obj(status, "migrationState", "status")
    target = _qty(migration, "targetMemoryOverhead", "status.migrationState")

    # WantsToHaveQOSGuaranteed (staging/src/kubevirt.io/api/core/v1/types.go).
    memory_wants = ((not req_mem and bool(lim_mem))
                    or (bool(req_mem) and req_mem == (lim_mem or 0)))
    cpu_wants = bool(req_cpu) and req_cpu == (lim_cpu or 0)
    probes = sum(1 for key in ("livenessProbe", "readinessProbe")
                 if _obj(spec, key, "spec").get("exec") is not None)
    volumes = _list(spec, "volumes", "spec")
    name = _str(meta, "name", "metadata") or "(unnamed)"
    namespace = _str(meta, "namespace", "metadata")
    vmi = Vmi(
        name=f"{namespace}/{name}" if namespace else name,
        requests_memory=to_bytes(req_mem) if req_mem else 0,
        guest=to_bytes(guest) if guest else None,
        max_guest=to_bytes(max_guest) if max_guest else None,
        vcpus=_vcpus(cpu, lim_cpu, req_cpu),
        graphics=autoattach is None or autoattach,
        arch=_str(spec, "architecture", "spec") or node_arch,
        gpus=len(_list(devices, "gpus", "spec.domain.devices")),
        host_devices=len(_list(devices, "hostDevices", "spec.domain.devices")),
        sriov=sum(1 for i in interfaces if i.get("sriov") is not None),
        realtime=cpu is not None and cpu.get("realtime") is not None,
        sev=launch.get("sev") is not None,
        sev_snp=launch.get("snp") is not None,
        tpm=tpm is not None,
        tpm_enabled=tpm is None or tpm.get("enabled") is not False,
        dedicated=(cpu is not None and cpu.get("dedicatedCpuPlacement") is True)
        or (memory_wants and cpu_wants),
        downward_metrics=any(v.get("downwardMetrics") is not None for v in volumes),
        exec_probes=probes,
        passt_without_ports=sum(1 for i in interfaces
                                if i.get("passt") is not None and not i.get("ports")),
        added_overhead=to_bytes(added) if added is not None else None,
        memlock_required=_str(reserved, "memLock",
                              "spec.domain.memory.reservedOverhead") == "Required",
        target_overhead=to_bytes(target) if target else None,
    )
    return VmiDocument(vmi, _str(status, "launcherContainerImageVersion", "status"),
                       _sidecars(meta))


def _vcpus(cpu: dict[str, Any] | None, lim: Fraction | None, req: Fraction | None) -> int:
    """GetNumberOfVCPUs (pkg/util/hardware/hw_utils.go): cores x sockets x threads,
    zeros skipped; without spec.domain.cpu, the CPU limit, else the request; at least 1."""
    if cpu is not None:
        n = _int(cpu, "cores", "spec.domain.cpu")
        for key in ("sockets", "threads"):
            k = _int(cpu, key, "spec.domain.cpu")
            if k:
                n = k if n == 0 else n * k
    elif lim:
        n = to_bytes(lim)
    elif req:
        n = to_bytes(req)
    else:
        n = 0
    return max(n, 1)


def _sidecars(meta: dict[str, Any]) -> int:
    """How many hook sidecars the VMI asks for (0 when the annotation is unreadable)."""
    annotations = _obj(meta, "annotations", "metadata")
    value = annotations.get("hooks.kubevirt.io/hookSidecars")
    if not isinstance(value, str) or len(value) > 64 * 1024:
        return 0
    try:
        entries = json.loads(value)
    except (ValueError, RecursionError):
        return 0
    return len(entries) if isinstance(entries, list) else 0
