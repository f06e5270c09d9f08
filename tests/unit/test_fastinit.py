"""fastinit: the quicker __init__ behaves exactly like the dataclass's own."""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass, field

import pytest
from memlock_guard.fastinit import fast_init


def _pair(**opts):
    @dataclass(frozen=True, slots=True, **opts)
    class Plain:
        a: int
        b: str = "b"
        c: tuple[int, ...] = ()
        d: int = field(default=7, init=False)

    @fast_init
    @dataclass(frozen=True, slots=True, **opts)
    class Fast:
        a: int
        b: str = "b"
        c: tuple[int, ...] = ()
        d: int = field(default=7, init=False)

    return Plain, Fast


@pytest.mark.parametrize(("args", "kwargs"), [((1,), {}), ((1, "x"), {}), ((1,), {"c": (2,)}),
                                              ((), {"a": 3, "b": "y", "c": (1, 2)})])
def test_same_fields_defaults_equality_hash_and_repr(args, kwargs):
    plain, fast = _pair()
    p, f = plain(*args, **kwargs), fast(*args, **kwargs)
    assert dataclasses.astuple(p) == dataclasses.astuple(f)
    assert repr(p).replace("Plain", "X") == repr(f).replace("Fast", "X")
    assert f == fast(*args, **kwargs) and hash(f) == hash(fast(*args, **kwargs))
    assert f.__init__ is not plain.__init__ and fast.__init__.__qualname__.endswith("__init__")


@fast_init
@dataclass(frozen=True, slots=True)
class Pickled:
    a: int
    b: str = "b"


def test_still_frozen_and_picklable():
    f = Pickled(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.a = 2  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(f)) == f


def test_argument_errors_match():
    plain, fast = _pair()
    for call in (lambda c: c(), lambda c: c(1, "b", (), 4), lambda c: c(1, e=2)):
        with pytest.raises(TypeError):
            call(plain)
        with pytest.raises(TypeError):
            call(fast)


def test_post_init_runs():
    @fast_init
    @dataclass(frozen=True, slots=True)
    class P:
        a: int
        double: int = field(init=False, compare=False)

        def __post_init__(self) -> None:
            object.__setattr__(self, "double", 2 * self.a)

    assert P(4).double == 8


def test_unsupported_classes_are_left_alone():
    @dataclass(frozen=True, slots=True)
    class Factory:
        a: list[int] = field(default_factory=list)

    @dataclass(frozen=True)
    class NoSlots:
        a: int

    for cls in (Factory, NoSlots):
        init = cls.__init__
        assert fast_init(cls).__init__ is init


def test_the_engine_classes_use_it():
    from memlock_guard.domain import Domain, Hostdev, Interface
    from memlock_guard.ledger import Exposure, LedgerItem

    for cls in (Domain, Hostdev, Interface, Exposure, LedgerItem):
        assert cls.__init__.__code__.co_filename == "<string>", cls
