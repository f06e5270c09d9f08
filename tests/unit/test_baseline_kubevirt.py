"""KubeVirt's memlock limit: GetMemoryOverhead() + the memory request, by version."""

from __future__ import annotations

import pytest
from memlock_guard.baselines.kubevirt import KNOWN_VERSIONS, kubevirt_limit, overhead

from .builders import GiB, MiB, domain, hostdevs

MEM = 8 * GiB
FIXED = (25 + 100 + 25 + 40 + 30) * MiB  # launcher monitor, launcher, virtlogd, virtqemud, QEMU
VNC = "<graphics type='vnc'/><video><model type='vga'/></video>"
RELEASED = [v for v in KNOWN_VERSIONS if v != "main"]


def ceil_1000(n: int) -> int:
    return -(-n // 1000) * 1000


def expected_overhead(*, vcpus: int, vfio: bool, graphics: bool, extra: int = 0) -> int:
    # pagetable: the request scaled to decimal kilo, then /512 of the byte value.
    return (ceil_1000(MEM) // 512 + FIXED + 8 * MiB * vcpus + 8 * MiB
            + (32 * MiB if graphics else 0) + (GiB if vfio else 0) + extra)


def _dom(devices: str = "", vcpus: int = 4, **kw: object):
    return domain(devices, memory="8", unit="GiB", vcpus=vcpus, **kw)


def test_overhead_terms():
    assert overhead(_dom(hostdevs(1) + VNC)) == expected_overhead(vcpus=4, vfio=True,
                                                                 graphics=True)
    assert overhead(_dom(hostdevs(1), vcpus=16)) == expected_overhead(vcpus=16, vfio=True,
                                                                     graphics=False)


def test_overhead_extras_tpm_sev_and_arm64():
    tpm = "<tpm model='tpm-crb'><backend type='emulator'/></tpm>"
    assert overhead(_dom(tpm)) == expected_overhead(vcpus=4, vfio=False, graphics=False,
                                                    extra=53 * MiB)
    sev = _dom(extra="<launchSecurity type='sev'/>")
    assert overhead(sev) == expected_overhead(vcpus=4, vfio=False, graphics=False,
                                              extra=256 * MiB)
    arm = _dom(arch="aarch64", machine="virt")
    assert overhead(arm) == expected_overhead(vcpus=4, vfio=False, graphics=False,
                                              extra=128 * MiB)


@pytest.mark.parametrize("version", RELEASED)
def test_memlock_is_overhead_plus_the_request_rounded_to_1000_bytes(version):
    got = kubevirt_limit(_dom(hostdevs(1) + VNC), version)
    assert not got.unlimited
    assert got.bytes == expected_overhead(vcpus=4, vfio=True, graphics=True) + ceil_1000(MEM)


@pytest.mark.parametrize("version", RELEASED)
def test_no_vfio_or_sev_leaves_the_limit_alone(version):
    got = kubevirt_limit(_dom(VNC), version)
    assert (got.bytes, got.unlimited) == (None, False)


def test_1_9_adds_n_minus_1_times_memory_for_n_vfio_devices_without_looking_for_a_viommu():
    base = expected_overhead(vcpus=4, vfio=True, graphics=False) + ceil_1000(MEM)
    for n in (1, 2, 3):
        for iommu in ("", "<iommu model='intel'/>"):
            got = kubevirt_limit(_dom(hostdevs(n) + iommu), "1.9")
            assert got.bytes == base + (n - 1) * MEM


@pytest.mark.parametrize("version", [v for v in RELEASED if v != "1.9"])
def test_before_1_9_the_device_count_does_not_matter(version):
    assert kubevirt_limit(_dom(hostdevs(3)), version).bytes == \
        kubevirt_limit(_dom(hostdevs(1)), version).bytes


def test_main_is_unlimited_for_vfio_and_sev():
    for d in (_dom(hostdevs(2)), _dom(extra="<launchSecurity type='sev'/>")):
        got = kubevirt_limit(d, "main")
        assert got.unlimited and got.bytes is None
    assert not kubevirt_limit(_dom(), "main").unlimited


def test_sev_alone_triggers_the_limit():
    got = kubevirt_limit(_dom(extra="<launchSecurity type='sev'/>"), "1.4")
    assert got.bytes == expected_overhead(vcpus=4, vfio=False, graphics=False,
                                          extra=256 * MiB) + ceil_1000(MEM)


def test_unknown_version_is_refused():
    with pytest.raises(ValueError, match="unknown KubeVirt version"):
        kubevirt_limit(_dom(hostdevs(1)), "0.59")
