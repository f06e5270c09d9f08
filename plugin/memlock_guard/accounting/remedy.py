"""What to change when a domain is short, in the words of the platform that defines it.

One place for every front end: the libvirt hook's refusal paragraph, the KubeVirt
sidecar's, and estimate/explain (text and JSON) all call ``remedies()``.

- plain libvirt: ``virsh memtune --config`` with the recommended hard_limit, or
  ``memlock-guard apply``;
- OpenStack Nova (the domain carries ``<nova:instance>``): Nova redefines the domain
  from the flavor and image at every start, hard reboot, resize and migration
  (driver.py ``_hard_reboot`` -> ``_get_guest_xml`` -> ``defineXML``), so the lasting
  fixes are flavor extra specs (``hw:locked_memory``, dropping ``hw:viommu_model``) and
  image properties (``hw_video_ram``), chosen by the ledger's biggest items. A flavor
  change reaches an existing instance only through a resize (Nova keeps its own copy of
  the flavor, doc/source/admin/flavors.rst); ``virsh memtune --config`` is a one-off;
- KubeVirt: libvirt's own number L must fit under virt-handler's M. The remedies raise
  M (``reservedOverhead.addedOverhead``, the cluster's overhead ratio, an upgrade) or
  lower L (no vIOMMU), with the exact numbers; never virsh, which session-mode libvirt
  refuses.
"""

from __future__ import annotations

import shlex
from typing import NamedTuple

from ..baselines.kubevirt import (
    MAIN_COMMIT,
    KubevirtLimit,
    added_overhead_for,
    kubevirt_limit,
    overhead,
    parse_version,
    ratio_for,
    upgrade_for,
)
from ..baselines.libvirt import libvirt_limit
from ..support.units import KiB, MiB, human
from .ledger import Kind
from .report import Report
from .verdict import Fit


class Remedy(NamedTuple):
    platform: str  # libvirt | nova | kubevirt
    action: str  # a short identifier, e.g. hard-limit, locked-memory, reserved-overhead
    text: str  # one sentence, for people
    command: str | None = None  # what to run or set, when there is one thing
    lasting: bool = True  # False: the platform undoes it (Nova's next hard reboot)


def platform_of(report: Report) -> str:
    if report.settings.platform == "kubevirt":
        return "kubevirt"
    return "nova" if report.domain.nova is not None else "libvirt"


def remedies(report: Report) -> tuple[Remedy, ...]:
    """The fixes for a short domain, most direct first; () when it is not short."""
    if report.verdict.fit is not Fit.SHORT:
        return ()
    platform = platform_of(report)
    if platform == "kubevirt":
        return _kubevirt(report)
    if platform == "nova":
        return _nova(report)
    return _libvirt(report)


def sentence(report: Report) -> str:
    """The remedies as one sentence, for a one-paragraph message."""
    found = remedies(report)
    if not found:
        return ""
    platform = platform_of(report)
    if platform == "libvirt":
        # The wording libvirt users have seen since the first release of the hook.
        return f"{found[0].text}, or run: {found[1].command}"
    text = "; or ".join(r.text for r in found)
    if platform == "nova":
        return (f"Nova redefines this domain from its flavor and image at every start and "
                f"hard reboot, so change those: {text}")
    return text


# -- plain libvirt ------------------------------------------------------------------

def _memtune(report: Report) -> str:
    kib = report.verdict.recommended_hard_limit // KiB
    return f"virsh memtune {shlex.quote(report.domain.name)} --hard-limit {kib} --config"


def _libvirt(report: Report) -> tuple[Remedy, ...]:
    v = report.verdict
    room = []
    if v.memory_reserve:
        room.append("memory hot-added up to maxMemory")
    if v.vfio_reserve:
        room.append("the policy's hotplug reserve of VFIO devices")
    basis = "the requirement" + (f" plus room for {' and '.join(room)}" if room else "")
    return (
        Remedy("libvirt", "hard-limit",
               f"{_memtune(report)} (KiB, = {human(v.recommended_hard_limit)}: {basis} or "
               f"QEMU's footprint, whichever is larger, plus margin)", _memtune(report)),
        Remedy("libvirt", "apply", "memlock-guard apply raises it the same way",
               f"memlock-guard apply {shlex.quote(report.domain.name)}"),
    )


# -- OpenStack Nova -----------------------------------------------------------------

def _nova(report: Report) -> tuple[Remedy, ...]:
    d, led = report.domain, report.ledger
    nova = d.nova
    assert nova is not None
    flavor = nova.flavor or "FLAVOR"
    server = d.uuid or "SERVER"  # Nova's instance uuid is the domain's
    resize = (f"a flavor change reaches this instance only through a resize: set it on "
              f"a copy of flavor {flavor!r} and run openstack server resize --flavor "
              f"NEW_FLAVOR {server}")
    out: list[Remedy] = []
    page_size = nova.extra_spec("hw:mem_page_size") or nova.image_property("hw_mem_page_size")
    cmd = "openstack flavor set NEW_FLAVOR --property hw:locked_memory=true"
    if page_size is None:
        cmd += " --property hw:mem_page_size=large"
        need = ("it needs hw:mem_page_size too (large: hugepages on the compute node; "
                "small also works)")
    else:
        need = f"hw:mem_page_size is already {page_size!r}"
    out.append(Remedy("nova", "locked-memory",
                      f"lock the guest's memory with the flavor property hw:locked_memory=true "
                      f"(Nova 26+; {need}), so libvirt sets no limit at all: {cmd}; {resize}",
                      cmd))
    if d.iommu is not None and len(d.vfio_devices) > 1 and _fits_without_viommu(report):
        shared = sum(i.charged - i.bytes for i in led.items if i.containers > 1)
        spec = nova.extra_spec("hw:viommu_model")
        image = nova.image_property("hw_viommu_model")
        where = (f"the flavor's hw:viommu_model={spec!r}" if spec is not None
                 else f"the image's hw_viommu_model={image!r}" if image is not None
                 else "hw:viommu_model (flavor) or hw_viommu_model (image)")
        out.append(Remedy("nova", "drop-viommu",
                          f"drop the vIOMMU, {where}: its {len(d.vfio_devices)} VFIO devices "
                          f"then share one container, {human(shared)} less to pin, and "
                          f"libvirt's own limit covers the rest"
                          + ("; " + resize if spec is not None else ""),
                          "openstack flavor unset NEW_FLAVOR --property hw:viommu_model"
                          if spec is not None or image is None else
                          f"openstack image unset --property hw_viommu_model "
                          f"{nova.image or 'IMAGE'}"))
    video = [i for i in led.biggest(4) if i.kind is Kind.VIDEO and i.bytes > _NOVA_VRAM]
    vram = nova.image_property("hw_video_ram")
    short = -(report.verdict.headroom or 0)
    saved = sum((i.bytes - _NOVA_VRAM) * i.containers for i in video[:1])
    if video and (vram is not None or not nova.detailed) and saved >= short:
        cap = nova.extra_spec("hw_video:ram_max_mb")
        now = f"now {vram} MiB" if vram is not None else "if the image sets it"
        capped = f"; the flavor caps it at hw_video:ram_max_mb={cap}" if cap else ""
        image = nova.image or "IMAGE"
        mib = _NOVA_VRAM // MiB
        out.append(Remedy("nova", "video-ram",
                          f"give the guest less video RAM with the image property "
                          f"hw_video_ram ({now}{capped}; {video[0].source} pins "
                          f"{human(video[0].charged)}, {human(saved)} of it above {mib} MiB): "
                          f"openstack image set --property hw_video_ram={mib} {image} for new "
                          f"instances, and for this one, stopped, nova-manage image_property "
                          f"set {server} --property hw_video_ram={mib} (Nova 25+)",
                          f"openstack image set --property hw_video_ram={mib} {image}"))
    out.append(Remedy("nova", "hard-limit-one-off",
                      f"as a one-off only, {_memtune(report)} (KiB): Nova's next hard "
                      f"reboot, stop/start, resize or migration redefines the domain without "
                      f"it", _memtune(report), lasting=False))
    return tuple(out)


# The video RAM a Nova remedy suggests: libvirt's default vram for VGA (16 MiB).
_NOVA_VRAM = 16 * MiB


def _fits_without_viommu(report: Report) -> bool:
    """Whether the domain would fit with its VFIO devices in one container: the ledger
    without the extra copies, under libvirt's limit without the vIOMMU."""
    d, led = report.domain, report.ledger
    required = report.verdict.required - sum(i.charged - i.bytes for i in led.items
                                             if i.containers > 1)
    bare = libvirt_limit(d._replace(iommu=None), report.libvirt.version)
    return bare.bytes is None or bare.bytes >= required


# -- KubeVirt -------------------------------------------------------------------------

def _kubevirt(report: Report) -> tuple[Remedy, ...]:
    v, kv, lv = report.verdict, report.kubevirt, report.libvirt
    out: list[Remedy] = []
    if v.limit.blocked and lv.bytes is not None and kv.bytes is not None:
        target = lv.bytes
        out += _raise_virt_handler(report, kv, target)
        out += _drop_viommu_kubevirt(report, kv)
        found = upgrade_for(kv, target)
        if found is not None and found.main:
            out.append(Remedy("kubevirt", "upgrade",
                              f"run a KubeVirt built from main with commit {MAIN_COMMIT} or "
                              f"later (memlock unlimited; not in any release up to 1.9)"))
        elif found is not None:
            out.append(Remedy("kubevirt", "upgrade",
                              f"upgrade KubeVirt to {found} or later, whose limit is "
                              f"{human(kubevirt_bytes(kv, str(found)))} (it adds (N-1) x "
                              f"memory for N VFIO devices)"))
    if not out or v.required > (lv.bytes or 0) > 0:
        out.append(Remedy("kubevirt", "reduce",
                          f"libvirt in the pod gives QEMU exactly its own limit "
                          f"({human(lv.bytes or 0)}: {lv.explanation}), and no KubeVirt "
                          f"setting raises that: remove devices or the vIOMMU, or shrink the "
                          f"biggest items beyond guest RAM"))
    return tuple(out)


def kubevirt_bytes(kv: KubevirtLimit, version: str) -> int:
    assert kv.vmi is not None
    return kubevirt_limit(kv.vmi, version, kv.ratio).bytes or 0


def _raise_virt_handler(report: Report, kv: KubevirtLimit, target: int) -> list[Remedy]:
    out: list[Remedy] = []
    assert kv.bytes is not None and kv.vmi is not None
    short = target - kv.bytes
    mib = added_overhead_for(kv, target)
    if mib is not None:
        added = mib + (kv.vmi.added_overhead or 0) // MiB
        yaml = f"reservedOverhead: {{addedOverhead: {added}Mi, memLock: Required}}"
        out.append(Remedy("kubevirt", "reserved-overhead",
                          f"set spec.domain.memory.{yaml} on the VMI (a VM's "
                          f"spec.template.spec; KubeVirt 1.8+ with the feature gate "
                          f"ReservedOverheadMemlock): virt-handler's limit becomes at least "
                          f"{human(target)}, and the virt-launcher pod requests "
                          f"{mib} MiB more memory", f"spec.domain.memory.{yaml}"))
    ratio = ratio_for(kv, target)
    if ratio is not None:
        version = parse_version(kv.version)
        before = overhead(kv.vmi._replace(target_overhead=None), version, kv.ratio)
        after = overhead(kv.vmi._replace(target_overhead=None), version, ratio)
        was = f"now {kv.ratio}" if kv.ratio else "unset now"
        out.append(Remedy("kubevirt", "overhead-ratio",
                          f"set additionalGuestMemoryOverheadRatio: \"{ratio}\" in the "
                          f"KubeVirt CR's spec.configuration ({was}); this is cluster-wide: "
                          f"every VMI's overhead, and so its pod's memory request, grows by "
                          f"that factor (this VMI's from {human(before)} to {human(after)}, "
                          f"to cover {human(short)} more)",
                          f"additionalGuestMemoryOverheadRatio: \"{ratio}\""))
    return out


def _drop_viommu_kubevirt(report: Report, kv: KubevirtLimit) -> list[Remedy]:
    d = report.domain
    if d.iommu is None or len(d.vfio_devices) < 2 or kv.bytes is None:
        return []
    bare = libvirt_limit(d._replace(iommu=None), report.libvirt.version)
    if bare.bytes is None or bare.bytes > kv.bytes:
        return []
    return [Remedy("kubevirt", "drop-viommu",
                   f"remove the <iommu> (KubeVirt does not add one on x86; a hook sidecar "
                   f"does): libvirt then asks for {human(bare.bytes)}, within "
                   f"virt-handler's {human(kv.bytes)}")]
