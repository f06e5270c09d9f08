"""The example plugin (examples/plugin/), installed into the test virtualenv by
scripts/setup.sh, counts only once the policy allows it, and is not even imported before.

Driven through the hook's own entry point in a fresh interpreter, as libvirt runs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from memlock_guard.domain import parse_domain

from ..conftest import EXAMPLES, IN_CI, PINNED_HOST

NAME = "site-reserve"
MODULE = "memlock_guard_site_reserve"
NS = "urn:memlock-guard:policy:1"
RESERVE = 32 * 1024 * 1024

RUN = """
import io, json, sys
from memlock_guard.hook import run
code = run([sys.argv[1], "prepare", "begin", "-"], stdin=io.BytesIO(sys.stdin.buffer.read()),
           policy_path=sys.argv[2], facts_path=sys.argv[3], use_syslog=False,
           stderr=io.StringIO())
print(json.dumps({"code": code, "imported": sys.argv[4] in sys.modules}))
"""


@pytest.fixture(scope="module", autouse=True)
def installed() -> None:
    if NAME not in {ep.name for ep in entry_points(group="memlock_guard")}:
        why = "the example plugin is not installed (scripts/setup.sh installs it)"
        if IN_CI:
            pytest.fail(why)
        pytest.skip(why)


def hook(tmp_path: Path, body: str) -> tuple[dict[str, object], dict[str, object]]:
    """(what the run says, its audit record) for examples/gpu-passthrough.xml."""
    log = tmp_path / "audit.jsonl"
    policy = tmp_path / "policy.xml"
    policy.write_text(f'<policy xmlns="{NS}"><mode>strict</mode>{body}'
                      f"<audit-log>{log}</audit-log></policy>")
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps(PINNED_HOST))
    p = subprocess.run([sys.executable, "-c", RUN, "gpu", str(policy), str(facts), MODULE],
                       input=(EXAMPLES / "gpu-passthrough.xml").read_bytes(),
                       capture_output=True, timeout=120, check=True)
    (record,) = [json.loads(line) for line in log.read_text().splitlines()]
    return json.loads(p.stdout), record


def test_installed_but_not_allowed_it_is_not_even_imported(tmp_path: Path):
    run, record = hook(tmp_path, "")
    assert run["imported"] is False
    assert "excluded_plugins" not in record


def test_allowed_it_adds_its_reserve_per_passthrough_device(tmp_path: Path):
    (tmp_path / "without").mkdir()
    _, without = hook(tmp_path / "without", "")
    run, record = hook(tmp_path, f"<plugins><allow>{NAME}</allow></plugins>")
    assert run["imported"] is True
    assert "excluded_plugins" not in record
    # One reserve per VFIO device (the GPU and its audio function), each pinned once.
    devices = parse_domain((EXAMPLES / "gpu-passthrough.xml").read_bytes()).vfio_devices
    assert len(devices) == 2
    assert isinstance(record["required"], int) and isinstance(without["required"], int)
    assert record["required"] - without["required"] == len(devices) * RESERVE


def test_the_example_is_the_one_the_guide_shows():
    code = (EXAMPLES / "plugin" / f"{MODULE}.py").read_text()
    guide = (EXAMPLES.parent / "docs" / "plugins.md").read_text()
    assert "RESERVE_PER_DEVICE = 32 * 1024 * 1024" in code and code.count("@hookimpl") == 1
    body = code.split("@hookimpl", 1)[1]
    shown = guide.split("@hookimpl", 1)[1].split("```", 1)[0]
    assert [line for line in shown.splitlines() if line.strip() and "#" not in line] == \
        [line for line in body.splitlines() if line.strip() and "#" not in line]
