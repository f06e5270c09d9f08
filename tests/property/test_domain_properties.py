"""Properties of the whole judgement over generated domains (tests/property/strategies.py).

- nothing but InputError ever escapes, and a valid domain is never refused;
- strict >= tolerant, whatever the zero-page allowance;
- adding a device never lowers the strict requirement;
- with a vIOMMU, N VFIO devices are N containers;
- the JSON report validates against schemas/estimate.schema.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, note
from hypothesis import strategies as st
from memlock_guard.accounting.ledger import Kind
from memlock_guard.accounting.modes import Mode
from memlock_guard.accounting.report import Report, Settings, assess
from memlock_guard.commands import render
from memlock_guard.domain import parse_domain
from memlock_guard.host import probe as host
from memlock_guard.plugins import manager as plugins
from memlock_guard.support.errors import InputError

from ..conftest import PINNED_HOST, ROOT
from .strategies import (
    DEVICE,
    SETTINGS,
    Spec,
    domains,
    junk_domains,
    nic,
    plain_disk,
    vfio_hostdev,
    video,
)

HOST = host.collect(override=PINNED_HOST)
PM = plugins.manager()
SCHEMA = ROOT / "schemas" / "estimate.schema.json"

SETTINGS_ST = st.builds(
    Settings,
    mode=st.sampled_from(list(Mode)),
    margin=st.integers(0, 2**34),  # a policy margin is a size: never negative
    zero_page_allowance=st.one_of(st.none(), st.integers(0, 2**40)),
    libvirt_version=st.sampled_from([None, (7, 0, 0), (8, 7, 0), (9, 0, 0), (9, 3, 0),
                                     (10, 10, 0), (12, 2, 0)]),
    kubevirt_version=st.sampled_from(["1.0", "1.5.2", "1.8", "1.8.3", "1.9", "main"]),
    kubevirt_overhead_ratio=st.sampled_from([None, "1.0", "1.5", "12.62"]),
    platform=st.sampled_from(["libvirt", "kubevirt"]),
)


DEFAULT = Settings()


def judge(xml: bytes, settings: Settings = DEFAULT) -> Report:
    note(xml.decode())
    return assess(parse_domain(xml), HOST, settings, PM)


@SETTINGS
@given(domains(), SETTINGS_ST)
def test_a_valid_domain_is_always_judged(spec: Spec, settings: Settings) -> None:
    r = judge(spec.xml(), settings)
    render.to_text(r)
    json.loads(render.to_json(r))
    v = r.verdict
    assert v.required_strict >= 0 and v.required_tolerant >= 0
    assert v.recommended_hard_limit >= max(v.required, v.footprint)
    assert v.recommended_hard_limit % (1024 * 1024) == 0


@SETTINGS
@given(junk_domains())
def test_junk_values_give_input_error_and_nothing_else(xml: bytes) -> None:
    note(xml.decode(errors="replace"))
    try:
        r = assess(parse_domain(xml), HOST, Settings(), PM)
    except InputError as e:
        msg = str(e)
        assert msg and "\n" not in msg and len(msg) < 400
        return
    render.to_text(r)  # junk that happens to be valid (e.g. ' 4') must still render


@SETTINGS
@given(domains(), st.one_of(st.none(), st.integers(0, 2**40)))
def test_strict_is_never_below_tolerant(spec: Spec, allowance: int | None) -> None:
    ledger = judge(spec.xml()).ledger
    strict = ledger.required(Mode.STRICT)
    tolerant = ledger.required(Mode.TOLERANT, allowance)
    assert strict >= tolerant >= 0
    assert tolerant >= ledger.required(Mode.TOLERANT, None)  # forgiving all is the floor


@SETTINGS
@given(domains(max_devices=6), DEVICE)
def test_adding_a_device_never_lowers_the_strict_requirement(spec: Spec, device: str) -> None:
    # The first explicit <video> replaces the default one libvirt adds for <graphics>
    # (domain/video.py post_parse_videos): a smaller card then maps less, rightly.
    assume(not (device.startswith("<video")
                and not any(d.startswith("<video") for d in spec.devices)))
    before = judge(spec.xml()).verdict.required_strict
    after = judge(spec.plus(device).xml()).verdict.required_strict
    assert after >= before


@SETTINGS
@given(st.lists(vfio_hostdev(), min_size=1, max_size=12),
       st.lists(st.one_of(nic(), plain_disk(), video()), max_size=4),
       st.sampled_from(["intel", "smmuv3", "virtio"]), domains(max_devices=0))
def test_with_a_viommu_n_vfio_devices_are_n_containers(vfio: list[str], others: list[str],
                                                        iommu: str, base: Spec) -> None:
    """PCI and mdev hostdevs and VF interfaces, mixed with devices that pin nothing."""
    n = len(vfio)
    spec = Spec(memory=base.memory, arch="x86_64", machine="pc-q35-7.2", iommu=iommu,
                devices=tuple(vfio + others))
    r = judge(spec.xml())
    assert r.ledger.containers == n
    ram = [i for i in r.ledger.items if i.kind is Kind.RAM]
    assert ram and all(i.containers == n for i in ram)
    assert r.verdict.required_strict >= n * r.domain.memory
    assert r.libvirt.bytes is not None and r.libvirt.bytes >= n * r.domain.memory


@SETTINGS
@given(domains(), SETTINGS_ST)
def test_the_json_report_validates_against_the_schema(spec: Spec, settings: Settings) -> None:
    validator = _validator()
    report = render.to_dict(judge(spec.xml(), settings))
    errors = sorted(validator.iter_errors(report), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])


_VALIDATOR: Any = None


def _validator() -> Any:
    global _VALIDATOR
    if _VALIDATOR is None:
        if not SCHEMA.exists():
            pytest.skip(f"{SCHEMA.relative_to(ROOT)} does not exist yet")
        import jsonschema

        schema = json.loads(Path(SCHEMA).read_text())
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        _VALIDATOR = cls(schema, format_checker=cls.FORMAT_CHECKER)
    return _VALIDATOR
