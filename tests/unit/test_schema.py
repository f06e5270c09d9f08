"""schemas/estimate.schema.json is the contract of ``estimate --format json``: real CLI
output validates against it, and it is strict enough to notice drift."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from memlock_guard.cli import main

from ..conftest import CORPUS, EXAMPLES, ROOT
from .builders import MiB

SCHEMA_PATH = ROOT / "schemas" / "estimate.schema.json"
SCHEMA = json.loads(SCHEMA_PATH.read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

# Every 50th corpus file (sorted), about 48 domains of every architecture and feature.
SPREAD = sorted(CORPUS.rglob("*.xml"))[::50] if CORPUS.is_dir() else []


def check_report(doc: dict[str, Any]) -> None:
    """The schema, plus the rules a JSON Schema cannot state."""
    VALIDATOR.validate(doc)
    for item in doc["items"]:
        assert item["charged_bytes"] == item["bytes"] * item["containers"], item
        # Every container maps the whole address space; an estimator may only lower
        # the count for a mapping some containers skip.
        assert item["containers"] <= doc["containers"]["count"], item
    assert doc["containers"]["count"] == len(doc["containers"]["reasons"])
    req = doc["required_bytes"]
    assert req["strict"] >= req["tolerant"]
    if doc["containers"]["count"] == 0:
        assert req == {"strict": 0, "tolerant": 0}
    limit = doc["effective_limit"]["bytes"]
    demand = doc["effective_limit"]["demand_bytes"] or 0
    if limit is not None:
        assert doc["headroom_bytes"] == limit - max(req[doc["mode"]] + doc["uid_pinned_bytes"],
                                                    demand)
    assert (doc["remedies"] != []) is (doc["verdict"] == "short")
    assert all(r["platform"] == doc["platform"] for r in doc["remedies"])
    reserve = doc["hotplug_reserve_bytes"]
    assert reserve["memory"] == sum(i["charged_bytes"] for i in doc["items"]
                                    if i.get("hotplug"))
    need = req[doc["mode"]] + reserve["memory"] + reserve["vfio_devices"] \
        + doc["uid_pinned_bytes"]
    assert doc["recommended_hard_limit_bytes"] >= max(need, doc["footprint_bytes"])
    assert doc["recommended_hard_limit_bytes"] % MiB == 0


def estimate_json(capsys: pytest.CaptureFixture[str], xml: Path, host_file: Path,
                  *extra: str) -> dict[str, Any] | None:
    code = main(["estimate", "--xml", str(xml), "--host-facts", str(host_file),
                 "--format", "json", *extra])
    out, err = capsys.readouterr()
    if code == 2:
        assert out == "" and len(err.splitlines()) == 1
        return None
    assert code == 0, err
    doc: dict[str, Any] = json.loads(out)
    return doc


def test_the_schema_is_valid_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.xml")), ids=lambda p: p.stem)
@pytest.mark.parametrize("mode", ["strict", "tolerant", "auto"])
def test_every_example_validates(capsys, pinned_host_file, example, mode):
    doc = estimate_json(capsys, example, pinned_host_file, "--mode", mode)
    assert doc is not None
    check_report(doc)


@pytest.mark.parametrize("platform", ["libvirt", "kubevirt"])
@pytest.mark.parametrize("version", ["7.0.0", "8.7.0", "9.3.0", "12.2.0"])
def test_examples_validate_under_every_baseline(capsys, pinned_host_file, platform, version):
    for example in sorted(EXAMPLES.glob("*.xml")):
        doc = estimate_json(capsys, example, pinned_host_file, "--platform", platform,
                            "--libvirt-version", version, "--kubevirt-version", "main")
        assert doc is not None
        check_report(doc)


KUBEVIRT = ROOT / "tests" / "data" / "kubevirt"
NOVA = ROOT / "tests" / "data" / "nova"


@pytest.mark.parametrize("version", ["1.0", "1.7", "1.8.2", "1.8.3", "main"])
@pytest.mark.parametrize("ratio", [[], ["--kubevirt-overhead-ratio", "1.5"]])
def test_kubevirt_and_nova_fixtures_validate(capsys, pinned_host_file, version, ratio):
    for xml, extra in [(KUBEVIRT / "kubevirt-domain-gpu2-viommu.xml", ["--platform",
                                                                       "kubevirt"]),
                       (KUBEVIRT / "kubevirt-domain-mixed.xml", ["--platform", "kubevirt"]),
                       (NOVA / "nova-domain-gpu-viommu.xml", ["--libvirt-version", "8.0.0"]),
                       (NOVA / "nova-domain-locked.xml", [])]:
        doc = estimate_json(capsys, xml, pinned_host_file, "--kubevirt-version", version,
                            *ratio, *extra)
        assert doc is not None
        check_report(doc)


@pytest.mark.skipif(not SPREAD, reason=f"corpus not present at {CORPUS}")
@pytest.mark.parametrize("xml", SPREAD, ids=lambda p: p.name)
def test_a_spread_of_corpus_files_validates(capsys, pinned_host_file, xml):
    doc = estimate_json(capsys, xml, pinned_host_file)
    if doc is not None:  # a refusal is checked above: exit 2, one line
        check_report(doc)


@pytest.fixture(scope="module")
def sample() -> dict[str, Any]:
    from memlock_guard.accounting.report import assess
    from memlock_guard.commands import render
    from memlock_guard.domain import parse_domain
    from memlock_guard.host import probe as host

    from ..conftest import PINNED_HOST

    d = parse_domain((EXAMPLES / "qxl-desktop-gpu.xml").read_bytes())
    return render.to_dict(assess(d, host.collect(override=PINNED_HOST)))


def _mutated(doc: dict[str, Any], path: str, value: Any = None, *, delete: bool = False,
             ) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    *parents, last = path.split("/")
    node: Any = out
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if delete:
        del node[last]
    else:
        node[last] = value
    return out


DRIFT = [
    ("an unknown top-level field", "surprise", 1, False),
    ("an unknown item field", "items/0/colour", "red", False),
    ("a missing contract field", "recommended_hard_limit_bytes", None, True),
    ("a missing item field", "items/0/containers", None, True),
    ("an unknown backing", "items/0/backing", "swap", False),
    ("an unknown kind", "items/0/kind", "gpu", False),
    ("negative bytes", "items/0/bytes", -1, False),
    ("unresolved auto mode", "mode", "auto", False),
    ("an unknown verdict", "verdict", "maybe", False),
    ("libvirt bytes null but not unlimited", "baselines/libvirt/bytes", None, False),
    ("libvirt unlimited with bytes", "baselines/libvirt/unlimited", True, False),
    ("a libvirt version that is not X.Y.Z", "baselines/libvirt/version", "9", False),
    ("an unknown limit source", "effective_limit/source", "magic", False),
    ("a recommendation not in whole MiB", "recommended_hard_limit_bytes", 1048577, False),
    ("headroom null on a limited verdict", "headroom_bytes", None, False),
    ("a string for a number", "required_bytes/strict", "1024", False),
    ("a float for a number", "footprint_bytes", 1.5, False),
]


@pytest.mark.parametrize(("what", "path", "value", "delete"), DRIFT, ids=[d[0] for d in DRIFT])
def test_the_schema_catches_drift(sample, what, path, value, delete):
    VALIDATOR.validate(sample)
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(_mutated(sample, path, value, delete=delete))


def test_verdict_and_headroom_must_agree(sample):
    fits = _mutated(_mutated(sample, "verdict", "fits"), "headroom_bytes", -5)
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(fits)
    unlimited = _mutated(sample, "verdict", "unlimited")  # but the limit has bytes
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(unlimited)
