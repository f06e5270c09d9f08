"""memlock-guard measure: what QEMU really maps for a domain, next to the estimate."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..measure.boot import Measurement

HELP = "read what a running QEMU maps for DMA (or follow a boot) and compare with the estimate"
DESCRIPTION = """\
Asks QEMU itself, through libvirt, what it maps into the guest address space that a
VFIO container would pin: the `ram` and `rom` ranges of `info mtree -f` (the flat view
of address space "memory"), after the VFIO listener's rules. Guest RAM (the memory
backends listed by `info memdev`, and their aliases) is set apart; everything else is
*non-RAM*: pc.bios and its aliases, pc.rom, video RAM BARs, option-ROM BARs, the VGA
legacy-window alias. It prints the non-RAM bytes, memlock-guard's strict estimate of
the non-RAM peak for the same domain (its live XML, this host's ROM files), and the
difference. The estimate must never be below what QEMU maps, and should be within
max(2 MiB, 1 %) above it.

Without --boot the domain must be running, and you get what is mapped *now*. That
misses the boot-time peak: firmware maps each option-ROM BAR for a few milliseconds,
and SeaBIOS's isa-bios alias and pc.rom vanish right after the first instruction.

--boot follows a boot to find the peak. It STARTS THE SHUT-OFF DOMAIN ITSELF, paused,
turns on QEMU's pci_update_mappings trace events (written to the domain's libvirt log,
which must be readable here), resumes it, samples the flat view until nothing has
changed for --settle seconds (under SeaBIOS: counted from the end of POST, when it
write-protects its shadow), at most --timeout seconds, and then DESTROYS the domain (a
hard power-off). The guest's firmware may begin to boot its OS in that window: use a
test definition or a VM you may power-cycle. A running domain is refused, never
stopped. Libvirt hooks run at that start as they would at any other.

The numbers are per VFIO container; the domain needs no VFIO device to be measured.

--zero-pages also measures the pages themselves: for every read-only region VFIO would
map (pc.bios, its isa-bios alias or copy, pc.rom, option-ROM BARs, qxl.vrom) it finds
the RAM block's host address and reads /proc/PID/pagemap and /proc/kpageflags (root:
PFNs need CAP_SYS_ADMIN) to count the pages QEMU wrote and the zero-fill ones (never
populated, or the shared zero page), next to the ledger's zero-fill items for that
region (joined by mapping: pc.bios, net0/bar6, ...). Read-write regions (guest RAM,
video RAM) get their populated share, for information. Nothing reads guest memory:
pagemap only walks page tables. A ROM BAR is mapped for milliseconds, so its host
address comes from --boot (KVM's slot trace), or from QEMU started with `-trace
find_ram_offset -trace qemu_anon_ram_alloc` (e.g. <qemu:commandline>), or from a RAM
block size no other block has; a region none of these resolves is reported unresolved,
with why, never guessed. Measure a domain without VFIO devices: on Linux >= 6.2 a
read-only pin replaces the zero page with real pages.

A boot that went wrong is no measurement (exit 2, one line naming what happened and the
log): the guest stopped running before its firmware had mapped its devices (libvirt says
paused, shut off or crashed, or the log says "KVM internal error" / "emulation
failure"), or the trace shows no BAR mapped at all although QEMU made ROM BARs. Firmware
KVM cannot run on this host (OVMF under KVM dies at once on some, e.g. nested ones) can
be measured under TCG: define the domain with <domain type='qemu'> (slower: give OVMF
--settle 8 or more). What QEMU maps does not depend on the accelerator.

examples:
  memlock-guard measure vm1
  memlock-guard measure vm1 --boot --format json
  memlock-guard measure vm1 --boot --connect qemu:///system --settle 8 --timeout 60
  memlock-guard measure vm1 --boot --zero-pages

exit status: 0 measured and the estimate covers it; 1 the estimate is BELOW what QEMU
maps, or (--zero-pages) the ledger calls more of a region zero-fill than QEMU left
unwritten, so tolerant accounting would forgive real pages (please report it with the
JSON output); 2 bad input, or the domain could not be measured (it did not
start, it died, its firmware mapped nothing)."""


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain", metavar="DOMAIN", help="libvirt domain name, UUID or id")
    from .libvirt_common import CONNECT_HELP, POLICY_HELP

    p.add_argument("--connect", "-c", metavar="URI", default=None,
                   help=CONNECT_HELP + ". --boot needs the domain's QEMU log readable "
                        "here (qemu:///system: /var/log/libvirt/qemu/NAME.log)")
    p.add_argument("--boot", action="store_true",
                   help="start the shut-off domain paused, follow its boot for the peak, "
                        "then destroy it (see above)")
    p.add_argument("--settle", metavar="SECONDS", type=float, default=3.0,
                   help="with --boot: stop once nothing changed for this long (default 3; "
                        "OVMF under TCG wants 8 or more)")
    p.add_argument("--timeout", metavar="SECONDS", type=float, default=60.0,
                   help="with --boot: stop following the boot after this long (default 60)")
    p.add_argument("--zero-pages", action="store_true",
                   help="also count, region by region, the pages QEMU never wrote "
                        "(pagemap, as root) and compare them with the ledger's zero-fill")
    p.add_argument("--policy", metavar="FILE", default=None,
                   help=POLICY_HELP.replace("options given here override both",
                                            "its plugins count in the estimate"))
    p.add_argument("--host-facts", metavar="FILE", default=None,
                   help="JSON file overriding what the estimate reads from this host")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="text for people (default), json for automation")


def run(args: argparse.Namespace) -> int:
    from ..accounting.ledger import Kind
    from ..accounting.report import assess
    from ..domain import parse_domain
    from ..host.facts import HostFacts
    from ..measure.boot import measure_boot, measure_now
    from ..measure.compare import estimated_non_ram, zero_fill
    from ..measure.pages import PageProbe
    from ..measure.target import open_target
    from ..policy.load import for_domain
    from ..policy.model import plugin_manager, to_settings
    from ..support.errors import InputError
    from .common import host_facts
    from .libvirt_common import load_policy
    from .measured import zero_fill_dict, zero_fill_lines

    if args.settle <= 0 or args.timeout <= 0:
        raise InputError("--settle and --timeout must be positive")
    policy = load_policy(args)  # a broken policy fails before the domain is touched
    target = open_target(args.domain, args.connect)
    probe = PageProbe() if args.zero_pages else None
    if args.boot:
        m = measure_boot(target, settle=args.settle, timeout=args.timeout, observer=probe)
    else:
        m = measure_now(target)
        if probe is not None:
            probe.done(target)
    domain = parse_domain(m.xml.encode())
    # The same judgement as every other verb: the policy's plugins count too.
    p = for_domain(policy, domain)
    host = host_facts(args, domain)
    ledger = assess(domain, host, to_settings(p), plugin_manager(p)).ledger
    estimate, always = estimated_non_ram(ledger)
    items = [(i.source, i.bytes, i.window.value if i.window else None)
             for i in ledger.items if i.kind is not Kind.RAM]
    out = _report(m, estimate, always, items)
    under = estimate < m.non_ram_bytes
    zf_lines: list[str] = []
    if probe is not None and probe.result is not None:
        zf = zero_fill(probe.result, ledger.items)
        # A read-only pin unshares the zero page since Linux 6.2 (the background of
        # tolerant accounting): a pinning domain's tails are real there.
        kernel = HostFacts(kernel_release=zf.facts.kernel).kernel_version
        unshared = ledger.containers > 0 and (kernel is None or kernel >= (6, 2))
        if unshared:
            zf = replace(zf, notes=(*zf.notes, "this domain pins its memory on Linux >= "
                                    "6.2, where a read-only pin replaces the zero page with "
                                    "real pages: zero-fill is not compared"))
        under |= not unshared and any(r.forgives_written for r in zf.rows)
        out["measured"].update(zero_fill_dict(zf))
        zf_lines = zero_fill_lines(zf)
    text = "" if args.format == "json" else "\n".join([_text(m, out), "", *zf_lines])
    print(json.dumps(out, indent=2) if args.format == "json" else text.rstrip())
    return 1 if under else 0



def _report(m: Measurement, estimate: int, always: int,
            items: list[tuple[str, int, str | None]]) -> dict[str, Any]:
    from ..measure.compare import tolerance

    diff = estimate - m.non_ram_bytes
    tol = tolerance(m.non_ram_bytes)
    return {
        "domain": m.domain,
        "what": "boot-peak" if m.boot else "now",
        "measured": {
            "non_ram_bytes": m.non_ram_bytes,
            "guest_ram_bytes": m.guest_ram_bytes,
            "parts": [{"what": w, "bytes": b} for w, b in m.parts],
            "pre_firmware_non_ram_bytes": m.pre_firmware_bytes,
            "final_non_ram_bytes": m.final_bytes,
            "rom_bars": [{"device": r.device, "bdf": r.bdf, "address": r.address,
                          "bytes": r.size,
                          "mapped_ms": None if r.end is None
                          else round((r.end - r.start) * 1000, 2)} for r in m.roms],
            "samples": m.samples,
            "duration_s": round(m.duration, 3),
            "warnings": list(m.warnings),
            "notes": list(m.notes),
        },
        "estimate": {
            "non_ram_strict_bytes": estimate,
            "non_ram_always_mapped_bytes": always,
            "items": [{"source": s, "bytes": b, "window": w} for s, b, w in items],
        },
        "difference_bytes": diff,
        "tolerance_bytes": tol,
        "covers": diff >= 0,
        "within_tolerance": 0 <= diff <= tol,
    }


def _text(m: Measurement, r: dict[str, Any]) -> str:
    from ..support.units import KiB, human

    def kib(n: int) -> str:
        if n % KiB or n < 1024 * KiB:
            return human(n)
        return f"{n // KiB} KiB ({human(n)})"

    meas = r["measured"]
    if m.boot:
        head = (f"{m.domain}: boot peak, followed {m.duration:.1f} s after resume, "
                f"{m.samples} samples, {len(m.roms)} ROM BAR(s) traced")
    else:
        head = f"{m.domain}: mapped now (a running domain; --boot finds the boot-time peak)"
    lines = [head, "", "non-RAM mapped" + (" at the peak" if m.boot else "")
             + " (per VFIO container):"]
    width = max((len(p["what"]) for p in meas["parts"]), default=10)
    lines += [f"  {p['what']:<{width}}  {human(p['bytes']):>10}" for p in meas["parts"]]
    if not meas["parts"]:
        lines.append("  (nothing)")
    if m.roms:
        lines.append("ROM BARs during boot (one at a time is normal):")
        for rb in meas["rom_bars"]:
            took = "still mapped" if rb["mapped_ms"] is None else f"{rb['mapped_ms']} ms"
            lines.append(f"  {rb['device']} {rb['bdf']}  {human(rb['bytes'])}  ({took})")
    if m.boot:
        lines.append(f"non-RAM before the first instruction: {human(m.pre_firmware_bytes or 0)};"
                     f" at the end: {human(m.final_bytes or 0)}")
    lines.append(f"guest RAM mapped: {human(m.guest_ram_bytes)}")
    lines += [f"warning: {w}" for w in m.warnings]
    lines += [f"note: {n}" for n in m.notes]
    est = r["estimate"]
    diff = r["difference_bytes"]
    if diff < 0:
        verdict = "UNDER-ESTIMATE: the estimate is below what QEMU maps"
    elif diff <= r["tolerance_bytes"]:
        verdict = "ok: covered, within tolerance"
    else:
        verdict = "covered, but more than the tolerance above it"
    sign = "+" if diff >= 0 else "-"
    lines += [
        "",
        f"measured non-RAM:               {kib(m.non_ram_bytes)}",
        f"estimated non-RAM, strict peak: {kib(est['non_ram_strict_bytes'])}"
        f"  (always mapped: {human(est['non_ram_always_mapped_bytes'])})",
        f"difference:                     {sign}{kib(abs(diff))}"
        f"  (tolerance max(2 MiB, 1%) = {human(r['tolerance_bytes'])}): {verdict}",
    ]
    if not m.boot:
        lines.append("note: the estimate is the boot-time peak; mapped now is usually lower")
    return "\n".join(lines)
