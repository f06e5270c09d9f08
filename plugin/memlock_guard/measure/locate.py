"""Where each QEMU RAM block lives in QEMU's address space: its host virtual address.

No monitor command gives the host address of a RAM block that is not mapped into the
guest (``info ramblock`` and QMP x-query-ramblock print none), and a ROM BAR is mapped
for milliseconds during boot only. So, in this order, each exact:

1. ``gpa2hva`` (HMP, monitor/misc.c) for every ram/rom range mapped now, and with
   ``--boot`` also before the first instruction (SeaBIOS's pc.rom and isa-bios alias
   vanish ~20 ms after it). Two devices with a region of the same name (two qxl) are
   told apart by whose BAR holds the address (``info pci``).
2. With ``--boot`` under KVM: the ``kvm_set_user_memory`` trace event, which gives each
   memory slot's guest address and host address ("ua=") when a ROM BAR is mapped;
   paired with ``pci_update_mappings_add ... 6,ADDR+SIZE`` of the same BAR.
3. The allocation trace, if QEMU was *started* with ``-trace find_ram_offset -trace
   qemu_anon_ram_alloc`` (e.g. libvirt ``<qemu:commandline>``): every block's ram_addr
   offset (``info ramblock``) with its host address. Under KVM and TCG alike.
4. /proc/PID/smaps: QEMU's RAM-block VMAs (pagemap.ram_block_vmas), matched by size,
   but only when exactly one unresolved block and one unclaimed VMA have that size
   (the 64 KiB vga.rom and the /rom@etc/table-loader blob do not qualify).

A block none of these resolves stays unresolved, with the reasons; nothing is inferred
from allocation order or contents. Measured on QEMU 7.2 (docs/sources.md §8): the four
methods agreed on every block any two of them resolved.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from . import pci
from .mappings import Mapping
from .qemu_text import BarEvent, KvmSlot, RamBlock, parse_gpa2hva

KVM_MEM_READONLY = 0x2
LEGACY_WINDOW = range(0xA0000, 0xC0000)  # where a VGA device's RAM is aliased (chain-4)
NOT_MAPPED_HINT = ("use --boot (under KVM), or start QEMU with -trace find_ram_offset "
                   "-trace qemu_anon_ram_alloc")


@dataclass(frozen=True, slots=True)
class Located:
    hva: int
    method: str  # gpa2hva | kvm-trace | alloc-trace | smaps-size
    evidence: str


@dataclass
class Locator:
    """Host addresses found so far, per RAM block name, and what went wrong."""

    blocks: Sequence[RamBlock]
    found: dict[str, Located] = field(default_factory=dict)
    # Device BARs ("ID/barN") each block was seen mapped at, through gpa2hva.
    bars: dict[str, set[str]] = field(default_factory=dict)
    # Blocks seen through the legacy VGA window (ledger: ALIAS/vga-window).
    windows: set[str] = field(default_factory=set)
    why: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def _found(self, name: str, loc: Located) -> None:
        old = self.found.get(name)
        if old is None:
            self.found[name] = loc
        elif old.hva != loc.hva:
            self.notes.append(f"{name}: {loc.method} says {loc.hva:#x}, {old.method} said "
                              f"{old.hva:#x}; kept the first")

    def _block(self, name: str) -> RamBlock | None:
        return next((b for b in self.blocks if b.name == name), None)

    # -- 1. gpa2hva --------------------------------------------------------------------

    def by_gpa2hva(self, ask: Callable[[int], str], mapped: Iterable[Mapping],
                   devices: Sequence[pci.PciDevice], when: str) -> None:
        """``ask(gpa)`` returns the monitor's answer to ``gpa2hva GPA``."""
        for m in mapped:
            got = parse_gpa2hva(ask(m.start))
            if got is None:
                self.notes.append(f"gpa2hva {m.start:#x} ({m.region}, {when}) refused")
                continue
            region, hva = got
            owner = pci.bar_holding(devices, m.start, m.size)
            name = self._block_of(region, owner)
            if name is None:
                continue
            end = parse_gpa2hva(ask(m.end))
            if end is None or end[1] != hva + m.size - 1:
                self.notes.append(f"{name}: gpa2hva of {m.start:#x} and {m.end:#x} are not "
                                  f"contiguous ({when}); not used")
                continue
            base = hva - (m.offset or 0)
            self._found(name, Located(base, "gpa2hva", f"gpa2hva {m.start:#x} -> {hva:#x} "
                                      f"({when})"))
            if owner is not None and owner[0].qemu_id:
                self.bars.setdefault(name, set()).add(f"{owner[0].qemu_id}/bar{owner[1].index}")
            elif owner is None and m.start in LEGACY_WINDOW:
                self.windows.add(name)

    def _block_of(self, region: str, owner: tuple[pci.PciDevice, pci.Bar] | None) -> str | None:
        """The RAM block behind a region name: the name itself (pc.bios, pc.ram, a
        backend), or DEVICE-PATH/NAME for a device's region."""
        if self._block(region) is not None:
            return region
        cands = [b.name for b in self.blocks if b.name.endswith("/" + region)]
        if len(cands) > 1 and owner is not None and owner[0].path is not None:
            cands = [c for c in cands if c == f"{owner[0].path}/{region}"]
        return cands[0] if len(cands) == 1 else None

    # -- 2. the KVM slot trace ---------------------------------------------------------

    def by_kvm_trace(self, events: Iterable[BarEvent], slots: Sequence[KvmSlot],
                     devices: Sequence[pci.PciDevice]) -> None:
        bdf = pci.by_bdf(devices)
        for ev in events:
            if not (ev.added and ev.is_rom):
                continue
            uas = {s.ua for s in slots if s.gpa == ev.address and s.size == ev.size
                   and s.flags & KVM_MEM_READONLY}
            dev = bdf.get(ev.bdf)
            path = dev.path if dev else None
            cands = [b.name for b in self.blocks if b.total == ev.size
                     and b.name.endswith(".rom") and pci.block_device_path(b.name) == path]
            if path is None or len(cands) != 1 or len(uas) != 1:
                continue
            ua = uas.pop()
            self._found(cands[0], Located(ua, "kvm-trace", f"ROM BAR {ev.device} {ev.bdf} "
                                          f"at {ev.address:#x}: KVM slot ua={ua:#x}"))

    # -- 3. the allocation trace -------------------------------------------------------

    def by_alloc_trace(self, allocations: dict[int, tuple[int, int]]) -> None:
        for b in self.blocks:
            hit = allocations.get(b.offset)
            if hit is not None and hit[0] == b.total:
                self._found(b.name, Located(hit[1], "alloc-trace",
                                            f"find_ram_offset {b.offset:#x}, "
                                            f"qemu_anon_ram_alloc ptr {hit[1]:#x}"))

    # -- 4. smaps, by a size no other block has ----------------------------------------

    def by_vma_size(self, vmas: Sequence[tuple[int, int]], wanted: Iterable[str]) -> None:
        taken = {loc.hva for loc in self.found.values()}
        free = [(s, n) for s, n in vmas if s not in taken]
        open_ = [b for b in self.blocks if b.name not in self.found]
        for name in wanted:
            b = self._block(name)
            if b is None or name in self.found:
                continue
            same = [x.name for x in open_ if x.total == b.total]
            spots = [s for s, n in free if n == b.total]
            if len(same) == 1 and len(spots) == 1:
                self._found(name, Located(spots[0], "smaps-size",
                                          f"the only unresolved RAM block and RAM-block VMA "
                                          f"of {b.total:#x} bytes"))
            elif len(same) > 1:
                others = ", ".join(x for x in same if x != name)[:160]
                self.why.setdefault(name, []).append(
                    f"its size ({b.total:#x}) is shared with {others}")
            else:
                self.why.setdefault(name, []).append(
                    f"{len(spots)} unclaimed RAM-block VMAs of its size ({b.total:#x})")

    def reason(self, name: str, *, boot: bool, kvm: bool) -> str:
        """Why ``name`` has no host address, in one line."""
        parts = ["not mapped now"]
        if not boot:
            parts.append("not followed through a boot")
        elif not kvm:
            parts.append("no KVM slot traced for it (TCG)")
        else:
            parts.append("no KVM slot traced for it")
        parts.append("no allocation trace in the log")
        parts += self.why.get(name, [])
        return "; ".join(parts) + f": {NOT_MAPPED_HINT}"
