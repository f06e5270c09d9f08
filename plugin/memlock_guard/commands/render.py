"""Reports as text for people and JSON for automation (schemas/estimate.schema.json)."""

from __future__ import annotations

import json
from typing import Any

from .. import __version__
from ..accounting import hotplug
from ..accounting.modes import Mode
from ..accounting.remedy import platform_of, remedies
from ..accounting.report import Report
from ..accounting.verdict import Fit
from ..support.units import human

JSON_SCHEMA_ID = "urn:memlock-guard:estimate:1"


def _v(version: tuple[int, int, int]) -> str:
    return ".".join(map(str, version))


def _nova(r: Report) -> dict[str, Any] | None:
    n = r.domain.nova
    if n is None:
        return None
    return {"instance": n.name, "flavor": n.flavor, "flavor_id": n.flavor_id,
            "flavor_memory_mib": n.flavor_memory_mib, "package": n.package,
            "image": n.image, "extra_specs": dict(n.extra_specs),
            "image_properties": dict(n.image_properties)}


def to_dict(r: Report) -> dict[str, Any]:
    v = r.verdict
    return {
        "$schema": JSON_SCHEMA_ID,
        "plugin_version": __version__,
        "domain": {"name": r.domain.name, "uuid": r.domain.uuid, "arch": r.domain.arch,
                   "machine": r.domain.machine.name, "memory_bytes": r.domain.memory,
                   "nova": _nova(r)},
        "platform": platform_of(r),
        "mode": v.mode.value,
        "mode_reason": v.mode_reason,
        "items": [
            {"source": i.source, "bytes": i.bytes, "backing": i.backing.value,
             "readonly": i.readonly, "transient": i.transient,
             "window": i.window.value if i.window else None, "containers": i.containers,
             "kind": i.kind.value, "charged_bytes": i.charged,
             **({"note": i.note} if i.note else {}),
             **({"mapping": i.mapping} if i.mapping else {}),
             **({"hotplug": True} if i.hotplug else {})}
            for i in r.ledger.items],
        "containers": {"count": r.ledger.containers, "reasons": list(r.ledger.container_reasons)},
        "backend": _backend(r),
        "required_bytes": {"strict": v.required_strict, "tolerant": v.required_tolerant},
        "zero_page_allowance_bytes": r.settings.zero_page_allowance,
        "baselines": {
            "libvirt": {"version": _v(r.libvirt.version), "assumed": r.libvirt_version_assumed,
                        "bytes": r.libvirt.bytes, "unlimited": r.libvirt.unlimited,
                        "source": r.libvirt.source, "explanation": r.libvirt.explanation},
            "kubevirt": {"version": r.kubevirt.version, "bytes": r.kubevirt.bytes,
                         "unlimited": r.kubevirt.unlimited,
                         "overhead_ratio": r.kubevirt.ratio,
                         "explanation": r.kubevirt.explanation},
        },
        "effective_limit": {"bytes": v.limit.bytes, "unlimited": v.limit.bytes is None,
                            "source": v.limit.source, "explanation": v.limit.explanation,
                            "demand_bytes": v.limit.demand},
        "verdict": v.fit.value,
        "headroom_bytes": v.headroom,
        "footprint_bytes": v.footprint,
        "recommended_hard_limit_bytes": v.recommended_hard_limit,
        "hotplug_reserve_bytes": {"memory": v.memory_reserve, "vfio_devices": v.vfio_reserve},
        "uid_pinned_bytes": v.uid_pinned,
        "excluded_plugins": list(r.ledger.excluded_plugins),
        "remedies": [{"platform": x.platform, "action": x.action, "text": x.text,
                      "command": x.command, "lasting": x.lasting} for x in remedies(r)],
        "will_not_start": list(r.will_not_start),
        "warnings": hotplug.to_dicts(hotplug.warnings(r)),
    }


def _backend(r: Report) -> dict[str, Any]:
    b = r.ledger.backend
    if b is None:  # a Ledger built by hand (tests)
        return {"name": "none", "accounting": "process", "reason": "", "fdgroup": None}
    return {"name": b.name, "accounting": b.accounting, "reason": b.reason,
            "fdgroup": b.fdgroup}


def to_json(r: Report) -> str:
    return json.dumps(to_dict(r), indent=2)


def sentence(r: Report) -> str:
    """The verdict in one sentence, and why QEMU will not start at all if it will not."""
    return " ".join((_fit(r), *r.will_not_start))


def _fit(r: Report) -> str:
    v = r.verdict
    need = f"{human(v.required)} ({v.mode.value})"
    if v.uid_pinned:
        need += f" on top of the {human(v.uid_pinned)} other QEMUs of its uid pin"
    if v.fit is Fit.UNLIMITED:
        return f"fits: QEMU's memlock is unlimited ({v.limit.explanation}); needs {need}."
    limit = human(v.limit.bytes)
    if v.required == 0:
        return f"fits: nothing pins guest memory (no VFIO, NVMe or vDPA device); limit {limit}."
    assert v.headroom is not None
    if v.fit is Fit.FITS:
        return (f"fits: needs {need}, QEMU gets {limit} ({v.limit.source}), "
                f"headroom {human(v.headroom)}.")
    if v.limit.blocked:
        return (f"SHORT by {human(-v.headroom)}: QEMU cannot start, libvirt in the pod asks "
                f"for {human(v.limit.demand)} but virt-handler allows {limit}; needs {need}. "
                f"Remedies below.")
    if platform_of(r) != "libvirt":
        return (f"SHORT by {human(-v.headroom)}: needs {need} but QEMU gets {limit} "
                f"({v.limit.source}). Remedies below.")
    return (f"SHORT by {human(-v.headroom)}: needs {need} but QEMU gets {limit} "
            f"({v.limit.source}); set <memtune><hard_limit> to at least "
            f"{v.recommended_hard_limit // 1024} KiB ({human(v.recommended_hard_limit)}).")


def to_text(r: Report) -> str:
    d, v, led = r.domain, r.verdict, r.ledger
    lines = [f"{d.name}: {d.arch}, {d.machine.name or 'default machine'}, "
             f"{human(d.memory)} memory, {d.vcpus} vCPU"]
    lines.append(f"mode: {v.mode.value} ({v.mode_reason})")
    reasons = "; ".join(led.container_reasons) or "nothing pins guest memory"
    lines.append(f"containers: {led.containers} ({reasons})")
    if led.backend is not None and led.containers:
        lines.append(f"backend: {led.backend.name}, {led.backend.accounting} "
                     f"accounting ({led.backend.reason})")
    lines.append("")
    header = ("SOURCE", "SIZE", "BACKING", "RO", "WINDOW", "CONT", "CHARGED")
    rows = [(i.source, human(i.bytes), i.backing.value, "ro" if i.readonly else "rw",
             "hotplug" if i.hotplug else i.window.value if i.window else "",
             str(i.containers), human(i.charged)) for i in led.items]
    widths = [max(len(x[c]) for x in [header, *rows]) for c in range(len(header))]
    right = {1, 5, 6}
    for row in [header, *rows]:
        cells = [c.rjust(w) if k in right else c.ljust(w)
                 for k, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  " + "  ".join(cells).rstrip())
    notes = [f"  * {i.source}: {i.note}" for i in led.items if i.note]
    if notes:
        lines.append("")
        lines += notes
    peak = led.peak_region()
    if peak:
        lines.append("")
        lines.append("  Items with a boot WINDOW are mapped only at boot, one region at a time;")
        lines.append(f"  the peak counts the largest: {peak[1]} ({human(peak[2])}).")
    lines.append("")
    ram = sum(i.charged for i in led.items if i.kind.value == "ram" and not i.hotplug)
    non_ram = v.required_strict - ram
    lines.append(f"required   strict {human(v.required_strict)} ({v.required_strict} B), "
                 f"tolerant {human(v.required_tolerant)} ({v.required_tolerant} B); "
                 f"beyond guest RAM: {human(non_ram)}")
    limit = "unlimited" if v.limit.bytes is None else f"{human(v.limit.bytes)} ({v.limit.bytes} B)"
    lines.append(f"QEMU gets  {limit} from {v.limit.source}: {v.limit.explanation}")
    lv = r.libvirt
    assumed = " (assumed: newest rules)" if r.libvirt_version_assumed else ""
    lv_bytes = "unlimited" if lv.unlimited else ("not set" if lv.bytes == 0
                                                  else human(lv.bytes))
    kv = r.kubevirt
    kv_bytes = "unlimited" if kv.unlimited else ("not set" if kv.bytes is None
                                                  else human(kv.bytes))
    lines.append(f"baselines  libvirt {_v(lv.version)}{assumed}: {lv_bytes}; "
                 f"KubeVirt {kv.version}: {kv_bytes}")
    if v.uid_pinned:
        lines.append(f"uid        {human(v.uid_pinned)} already pinned by other QEMUs of "
                     f"this uid, charged to the same user (iommufd user accounting)")
    if v.hotplug_reserve:
        parts = []
        if v.memory_reserve:
            parts.append(f"memory up to maxMemory {human(v.memory_reserve)}")
        if v.vfio_reserve:
            parts.append(f"{r.settings.reserve_vfio_devices} more VFIO device(s) "
                         f"{human(v.vfio_reserve)}")
        lines.append(f"hotplug    reserve {human(v.hotplug_reserve)} ({', '.join(parts)}): "
                     f"in the recommended hard_limit, not in the requirement at start")
    lines.append(f"footprint  {human(v.footprint)} (QEMU process, the cgroup cap must cover it); "
                 f"recommended hard_limit {human(v.recommended_hard_limit)}")
    for ex in led.excluded_plugins:
        lines.append(f"excluded   {ex}")
    for w in hotplug.warnings(r):
        lines.append(f"warning    {w.message}")
    lines.append("")
    lines.append(f"verdict: {sentence(r)}")
    if v.mode is Mode.TOLERANT and v.required_strict != v.required_tolerant:
        lines.append(f"         (strict accounting would need {human(v.required_strict)})")
    nova = r.domain.nova
    if nova is not None:
        lines.append(f"nova:    instance {nova.name!r}, flavor {nova.flavor!r} (Nova "
                     f"{nova.package or '?'}): Nova redefines this domain from the flavor "
                     f"and image at every start and hard reboot")
    found = remedies(r)
    if found and platform_of(r) != "libvirt":
        lines.append("remedies:")
        lines += [f"  - {x.text}" for x in found]
    return "\n".join(lines)
