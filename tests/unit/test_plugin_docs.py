"""docs/plugins.md documents every hook a plugin can implement, and every field of the
record a plugin returns (as datasette's tests/test_docs.py does for its hooks).

A hook added to plugins/spec.py, a parameter added to one, or a field added to
Exposure fails here until the guide says what it is.
"""

from __future__ import annotations

import inspect
import re

import pytest
from memlock_guard import plugins
from memlock_guard.plugins import spec

from ..conftest import ROOT

GUIDE = (ROOT / "docs" / "plugins.md").read_text()


def hookspecs() -> list[str]:
    return sorted(name for name, fn in vars(spec).items()
                  if callable(fn) and hasattr(fn, f"{spec.PROJECT}_spec"))


def test_there_are_hookspecs_to_check():
    assert hookspecs() == ["memlock_guard_container_reasons", "memlock_guard_exposures"]


@pytest.mark.parametrize("name", hookspecs())
def test_every_hook_has_a_section_with_its_exact_signature(name: str):
    params = ", ".join(inspect.signature(getattr(spec, name)).parameters)
    assert f"\n### {name}({params})\n" in GUIDE


@pytest.mark.parametrize("name", hookspecs())
def test_every_hook_parameter_is_explained_in_its_section(name: str):
    section = GUIDE.split(f"\n### {name}(", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    for param in inspect.signature(getattr(spec, name)).parameters:
        assert f"`{param}`" in section, f"{name}: parameter {param} is not explained"


@pytest.mark.parametrize("field", plugins.Exposure._fields)
def test_every_exposure_field_is_in_the_records_table(field: str):
    assert re.search(rf"^\| `{field}` \|", GUIDE, re.M), field


def test_the_guide_names_the_entry_point_group():
    assert f"[project.entry-points.{plugins.ENTRY_POINT_GROUP}]" in GUIDE
