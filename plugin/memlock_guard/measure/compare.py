"""The estimate next to the measurement: the ledger's non-RAM peak, and the tolerance."""

from __future__ import annotations

from ..accounting.ledger import Kind, Ledger
from ..accounting.modes import Mode
from ..support.units import MiB


def tolerance(measured: int) -> int:
    """How far above the measurement the estimate may be: max(2 MiB, 1 %)."""
    return max(2 * MiB, measured // 100)


def estimated_non_ram(ledger: Ledger) -> tuple[int, int]:
    """(peak, always-mapped) non-RAM bytes of the ledger, as one container maps them.

    The strict requirement minus the RAM items, per container: the ledger's own peak
    over boot windows, so the same arithmetic the verdict uses is what gets checked.
    """
    items = tuple(i._replace(containers=1) for i in ledger.items if i.kind is not Kind.RAM)
    one = Ledger(items, 1, ledger.container_reasons)
    always = sum(i.bytes for i in items if i.window is None)
    return one.required(Mode.STRICT), always
