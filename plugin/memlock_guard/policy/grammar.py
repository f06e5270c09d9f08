"""The RelaxNG grammar of the policy (schemas/policy.rng), enforced on every policy.

load.py checks each element first because RelaxNG's own messages ("Extra element mode
in interleave", line 0) do not tell an operator what to fix; this is the second check,
and the published grammar for editors and packaging.
"""

from __future__ import annotations

from lxml import etree

from ..support import xmlsafe
from ..support.defaults import package_file
from ..support.errors import InputError

_RNG_NS = "http://relaxng.org/ns/structure/1.0"

_SCHEMAS: dict[bool, etree.RelaxNG] = {}


def schema_path() -> str:
    """schemas/policy.rng: beside the package when installed, else in the source tree.

    """
    path = package_file("policy.rng", "schemas/policy.rng")
    if path is None:
        raise InputError("schemas/policy.rng is missing from this installation")
    return path


def _schema(host: bool) -> etree.RelaxNG:
    cached = _SCHEMAS.get(host)
    if cached is not None:
        return cached
    path = schema_path()
    with open(path, "rb") as f:
        grammar = xmlsafe.parse(f.read(), what=path)
    if not host:
        ref = grammar.find(f"{{{_RNG_NS}}}start/{{{_RNG_NS}}}ref")
        assert ref is not None, "policy.rng: <start> must hold a single <ref>"
        ref.set("name", "domain-policy")
    schema = etree.RelaxNG(grammar)
    _SCHEMAS[host] = schema
    return schema


def validate(root: etree._Element, what: str, *, host: bool) -> None:
    schema = _schema(host)
    if schema.validate(root):
        return
    # The Python checks above accept only what the grammar describes; reaching this
    # means the two disagree, so report the grammar's words with the best line we have.
    errors = [e for e in schema.error_log if e.line] or list(schema.error_log)
    first = errors[0] if errors else None
    line = f" line {first.line}" if first is not None and first.line else ""
    msg = first.message if first is not None else "does not match schemas/policy.rng"
    raise InputError(f"{what}{line}: {msg} (schemas/policy.rng)")
