"""The sidecar's VMI reader and KubeVirt formula over generated input.

- whatever JSON arrives as --vmi, only InputError escapes;
- a fixture VMI with any one field replaced by any JSON value is read or refused, never
  a crash, and a VMI that is read always gets a limit from every known version;
- the limit never falls when memory, vCPUs or VFIO devices are added (the remedies'
  searches depend on it).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from memlock_guard.baselines.kubevirt import kubevirt_limit
from memlock_guard.kubevirt.vmi import load
from memlock_guard.support.errors import InputError

from ..conftest import ROOT

FIXTURE = json.loads((ROOT / "tests" / "data" / "kubevirt" / "kubevirt-vmi-mixed.json")
                     .read_text())
VERSIONS = ["1.0.0", "1.1.0", "1.5.2", "1.5.3", "1.6.3", "1.6.4", "1.7.0", "1.8.0", "1.8.3",
            "1.9.0", "main"]

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.sampled_from(["16Gi", "1.5G", "-1", "2e9", "100m", ""]),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                               max_size=4),
    max_leaves=30)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths(v, (*prefix, i))
    return out


PATHS = paths(FIXTURE)


def judged(data: bytes) -> None:
    try:
        doc = load(data)
    except InputError:
        return
    for v in VERSIONS:
        got = kubevirt_limit(doc.vmi, v)
        assert got.unlimited or got.bytes is None or got.bytes > 0


@given(JSON)
def test_any_json_is_read_or_refused_with_one_line(value: Any) -> None:
    judged(json.dumps(value).encode())


@given(st.sampled_from(PATHS), JSON)
def test_any_field_of_a_real_vmi_may_be_anything(path: tuple[Any, ...], value: Any) -> None:
    doc = json.loads(json.dumps(FIXTURE))
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    judged(json.dumps(doc).encode())


@given(st.integers(1, 2**40), st.integers(1, 512), st.integers(0, 8),
       st.sampled_from(VERSIONS[:-1]))
def test_more_memory_cpus_or_devices_never_lower_the_limit(mem: int, cpus: int, n: int,
                                                          version: str) -> None:
    base = load(json.dumps(FIXTURE).encode()).vmi._replace(
        requests_memory=mem, guest=mem, vcpus=cpus, gpus=n, host_devices=0, sriov=0)
    got = kubevirt_limit(base, version).bytes or 0
    for more in (base._replace(requests_memory=mem * 2, guest=mem * 2),
                 base._replace(vcpus=cpus + 1), base._replace(gpus=n + 1)):
        assert (kubevirt_limit(more, version).bytes or 0) >= got
