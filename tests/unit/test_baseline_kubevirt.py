"""KubeVirt's memlock limit by version (docs/sources.md section 5): GetMemoryOverhead()
plus the base memory, and what it would take to raise it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from memlock_guard.baselines.kubevirt import (
    MAIN,
    KubevirtVersion,
    added_overhead_for,
    kubevirt_limit,
    overhead,
    parse_ratio,
    parse_version,
    ratio_for,
    upgrade_for,
    vmi_from_domain,
)
from memlock_guard.kubevirt.vmi import load
from memlock_guard.support.errors import InputError

from .builders import GiB, MiB, domain, hostdevs

DATA = Path(__file__).resolve().parent.parent / "data" / "kubevirt"
MEM = 8 * GiB
VNC = "<graphics type='vnc'/><video><model type='vga'/></video>"
# The fixture table names version ranges; one version stands for each.
RANGES = {"1.0": "1.0.0", "1.1": "1.1.0", "1.2": "1.2.0", "1.3": "1.3.0", "1.4": "1.4.0",
          "1.5.0-1.5.2": "1.5.2", "1.5.3": "1.5.3", "1.6.0-1.6.3": "1.6.3",
          "1.6.4+": "1.6.4", "1.7": "1.7.5", "1.8.0-1.8.2": "1.8.2", "1.8.3+": "1.8.4",
          "1.9": "1.9.0", "main": "main"}
EXPECTED = json.loads((DATA / "kubevirt-expected-limits.json").read_text())


def ceil_1000(n: int) -> int:
    return -(-n // 1000) * 1000


def expected_overhead(*, vcpus: int, vfio: bool, graphics: bool, fixed: int = 220,
                      video: int = 32, extra: int = 0) -> int:
    # page tables: the request scaled to decimal kilo, then /512 of the byte value
    return (ceil_1000(MEM) // 512 + fixed * MiB + 8 * MiB * vcpus + 8 * MiB
            + (video * MiB if graphics else 0) + (GiB if vfio else 0) + extra)


def _dom(devices: str = "", vcpus: int = 4, **kw: object):
    return domain(devices, memory="8", unit="GiB", vcpus=vcpus, **kw)


@pytest.mark.parametrize(("version", "fixed", "video"), [
    ("1.0.0", 210, 16), ("1.4.9", 210, 16), ("1.5.0", 220, 16), ("1.5.9", 220, 16),
    ("1.6.0", 220, 32), ("1.9.0", 220, 32)])
def test_overhead_constants_changed_over_the_versions(version: str, fixed: int, video: int):
    got = overhead(vmi_from_domain(_dom(hostdevs(1) + VNC)), parse_version(version))
    assert got == expected_overhead(vcpus=4, vfio=True, graphics=True, fixed=fixed,
                                    video=video)


def test_overhead_extras_tpm_sev_and_arm64():
    v = parse_version("1.9.0")
    tpm = "<tpm model='tpm-crb'><backend type='emulator'/></tpm>"
    assert overhead(vmi_from_domain(_dom(tpm)), v) == expected_overhead(
        vcpus=4, vfio=False, graphics=False, extra=53 * MiB)
    sev = vmi_from_domain(_dom(extra="<launchSecurity type='sev'/>"))
    assert overhead(sev, v) == expected_overhead(vcpus=4, vfio=False, graphics=False,
                                                 extra=256 * MiB)
    arm = vmi_from_domain(_dom(arch="aarch64", machine="virt"))
    assert overhead(arm, v) == expected_overhead(vcpus=4, vfio=False, graphics=False,
                                                 extra=128 * MiB)


def test_dedicated_cpus_are_added_after_the_ratio_from_1_1_to_1_5_2_only():
    vmi = vmi_from_domain(_dom(hostdevs(1)))._replace(dedicated=True)
    plain = vmi._replace(dedicated=False)

    def extra(version: str, ratio: str | None) -> int:
        v = parse_version(version)
        return overhead(vmi, v, ratio) - overhead(plain, v, ratio)

    assert extra("1.0.0", "2") == 0  # not counted at all in 1.0
    assert extra("1.3.0", None) == extra("1.3.0", "2") == 100 * MiB  # unscaled
    # Scaled by the ratio since 1.5.3 (to within the decimal-kB rounding of the scaling).
    assert abs(extra("1.5.3", "2") - 200 * MiB) < 2000
    assert abs(extra("1.9.0", "2") - 200 * MiB) < 2000


def test_the_ratio_scales_the_overhead_in_decimal_kilobytes_truncated():
    vmi = vmi_from_domain(_dom(hostdevs(1)))
    v = parse_version("1.7.0")
    o = overhead(vmi, v)
    assert overhead(vmi, v, "1.5") == o + int(-(-o // 1000) * 0.5) * 1000
    # The base memory is never scaled.
    assert kubevirt_limit(vmi, v, "1.5").bytes - kubevirt_limit(vmi, v).bytes == \
        overhead(vmi, v, "1.5") - o


def test_the_base_memory_is_the_request_then_guest_then_max_guest_by_version():
    vmi = vmi_from_domain(_dom(hostdevs(1)))._replace(requests_memory=4 * GiB, guest=6 * GiB,
                                                       max_guest=16 * GiB)

    def base(version: str) -> int:
        return kubevirt_limit(vmi, version).base or 0

    assert base("1.6.3") == 4 * GiB  # requests only
    assert base("1.6.4") == base("1.7.0") == 6 * GiB  # guest first
    assert base("1.8.0") == base("1.9.0") == 16 * GiB  # maxGuest first
    no_request = vmi._replace(requests_memory=0, max_guest=None)
    assert kubevirt_limit(no_request, "1.8.0").base == 6 * GiB  # then guest


@pytest.mark.parametrize("version", ["1.0.0", "1.4.0", "1.7.0", "1.8.2"])
def test_before_1_8_3_the_device_count_does_not_matter(version: str):
    assert kubevirt_limit(_dom(hostdevs(3)), version).bytes == \
        kubevirt_limit(_dom(hostdevs(1)), version).bytes


@pytest.mark.parametrize("version", ["1.8.3", "1.8.4", "1.9.0"])
def test_from_1_8_3_n_vfio_devices_add_n_minus_1_times_memory_vIOMMU_or_not(version: str):
    one = kubevirt_limit(_dom(hostdevs(1)), version).bytes
    for n in (2, 3):
        for iommu in ("", "<iommu model='intel'/>"):
            assert kubevirt_limit(_dom(hostdevs(n) + iommu), version).bytes == \
                one + (n - 1) * MEM


def test_main_is_unlimited_for_vfio_and_sev_and_nothing_else():
    for d in (_dom(hostdevs(2)), _dom(extra="<launchSecurity type='sev'/>")):
        got = kubevirt_limit(d, "main")
        assert got.unlimited and got.bytes is None
    assert not kubevirt_limit(_dom(VNC), "main").unlimited
    assert kubevirt_limit(_dom(VNC), "1.9.0").bytes is None  # left alone


@pytest.mark.parametrize(("text", "parsed"), [
    ("1.8", "1.8.0"), ("v1.8.3", "1.8.3"), (" 1.9.0 ", "1.9.0"), ("v1.9.0-rc.1", "1.9.0"),
    ("main", "main"), ("1.7.12", "1.7.12")])
def test_versions_parse(text: str, parsed: str):
    assert str(parse_version(text)) == parsed


@pytest.mark.parametrize("text", ["0.59", "1.10.0", "2.0", "latest", "1.8.3.1", ""])
def test_unknown_versions_are_refused_naming_what_is_known(text: str):
    with pytest.raises(InputError, match=r"1\.0\.0 \.\.\. 1\.9\.x"):
        parse_version(text)


def test_main_sorts_after_every_release():
    assert KubevirtVersion(False, 1, 9, 99) < MAIN
    assert str(MAIN) == "main"


@pytest.mark.parametrize("text", ["0.9", "abc", "1.5e3", "-2", "nan", ""])
def test_bad_ratios_are_refused(text: str):
    with pytest.raises(InputError, match=r"at least 1\.0"):
        parse_ratio(text)


CASES = [(name, version) for name, case in EXPECTED["cases"].items()
         for version in case["kubevirt"]]


@pytest.mark.parametrize(("case", "version"), CASES)
def test_every_fixture_vmi_and_version_gives_the_expected_limit(case: str, version: str):
    c = EXPECTED["cases"][case]
    vmi = load((DATA / c["vmi"]).read_bytes()).vmi
    got = kubevirt_limit(vmi, RANGES[version])
    want = c["kubevirt"][version]["limit"]
    assert ("unlimited" if got.unlimited else got.bytes) == want


def test_the_remedy_numbers_for_the_gpu2_viommu_fixture():
    vmi = load((DATA / "kubevirt-vmi-gpu2.json").read_bytes()).vmi
    libvirt = EXPECTED["cases"]["gpu2-viommu"]["libvirt"]
    kv18 = kubevirt_limit(vmi, "1.8.0")
    assert added_overhead_for(kv18, libvirt) == 16028  # MiB, as the fixture notes say
    assert added_overhead_for(kubevirt_limit(vmi, "1.7.0"), libvirt) is None  # no such field
    assert ratio_for(kubevirt_limit(vmi, "1.7.0"), libvirt) == "12.62"
    assert str(upgrade_for(kv18, libvirt)) == "1.8.3"
    # The numbers are the smallest that work: one step less does not.
    reserved = load((DATA / "kubevirt-vmi-gpu2-reserved.json").read_bytes()).vmi
    assert reserved.added_overhead == 16028 * MiB
    assert kubevirt_limit(reserved, "1.8.0").bytes >= libvirt
    less = reserved._replace(added_overhead=16027 * MiB)
    assert kubevirt_limit(less, "1.8.0").bytes < libvirt
    assert kubevirt_limit(vmi, "1.7.0", "12.61").bytes < libvirt
    assert kubevirt_limit(vmi, "1.7.0", "12.62").bytes >= libvirt


def test_the_ratio_remedy_starts_from_the_ratio_already_set():
    vmi = load((DATA / "kubevirt-vmi-mixed.json").read_bytes()).vmi
    libvirt = EXPECTED["cases"]["mixed-viommu"]["libvirt"]
    assert ratio_for(kubevirt_limit(vmi, "1.8.0"), libvirt) == "10.06"
    assert ratio_for(kubevirt_limit(vmi, "1.8.0", "2"), libvirt) == "10.06"
    assert added_overhead_for(kubevirt_limit(vmi, "1.8.0"), libvirt) == 11988
    # With a ratio, addedOverhead is scaled too, so less of it is needed.
    assert added_overhead_for(kubevirt_limit(vmi, "1.8.0", "2"), libvirt) < 11988


def test_no_upgrade_helps_when_even_main_is_the_only_way():
    vmi = vmi_from_domain(_dom(hostdevs(1)))
    kv = kubevirt_limit(vmi, "1.9.0")
    assert upgrade_for(kv, (kv.bytes or 0) + 1) == MAIN
    assert upgrade_for(kubevirt_limit(vmi, "main"), 1) is None
