"""Throughput of ``estimate``: 1000 varied domain XMLs in one process.

Prints the median time per domain of a full estimate (hardened parse, domain model,
ledger through the estimator plugins, baselines, verdict) as a ratio to lxml parsing
the same XML alone, and the median of each phase. The target is <= 3x. Nothing is
asserted: this prints numbers (they vary by +-10% between runs on a shared machine).

The domains are the shipped examples, files of libvirt's test corpus
(../shared/corpus/libvirt-10.7.0, when present) and variations of the examples
(memory size, vCPUs, number of VFIO devices, vIOMMU, video model, NICs), so that every
estimator has work to do. Host facts are pinned: no I/O inside the timed loop.

    python bench/estimate_throughput.py [--n 1000] [--repeat 5] [--profile]
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lxml import etree

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "plugin"))

from memlock_guard.accounting.engine import build_ledger  # noqa: E402
from memlock_guard.accounting.report import Settings, assess  # noqa: E402
from memlock_guard.commands.render import to_dict  # noqa: E402
from memlock_guard.domain import Domain, parse_domain  # noqa: E402
from memlock_guard.host import probe as hostmod  # noqa: E402
from memlock_guard.support import xmlsafe  # noqa: E402
from memlock_guard.support.errors import InputError  # noqa: E402

EXAMPLES = ROOT / "examples"
CORPUS = ROOT.parent / "shared" / "corpus" / "libvirt-10.7.0"
TARGET = 3.0
PHASES = ("hardened parse (xmlsafe)", "domain model", "ledger (estimators)",
          "assess (ledger+baselines+verdict)")

PINNED_HOST = {
    "probe_host": False, "kernel_release": "6.1.0", "libvirt_version": "9.0.0",
    "qemu_version": "7.2.0", "inherited_memlock_bytes": 67108864,
    "rom_sizes": {
        "bios-256k.bin": 262144, "efi-virtio.rom": 249344, "efi-e1000.rom": 249856,
        "efi-e1000e.rom": 249856, "efi-rtl8139.rom": 249856, "vgabios-stdvga.bin": 39936,
        "vgabios-qxl.bin": 39936, "vgabios-virtio.bin": 39936, "vgabios-cirrus.bin": 39424,
        "vgabios-bochs-display.bin": 28672, "vgabios-vmware.bin": 39936,
    },
}

HOSTDEV = ("<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000'"
           " bus='0x{bus:02x}' slot='0x00' function='0x0'/></source></hostdev>")
VIDEOS = ["<video><model type='vga' vram='16384' heads='1' primary='yes'/></video>",
          "<video><model type='qxl' ram='65536' vram='65536' vgamem='16384'/></video>",
          "<video><model type='virtio' heads='1'/></video>",
          "<video><model type='cirrus'/></video>", "<video><model type='none'/></video>"]
NICS = [f"<interface type='network'><source network='default'/><model type='{m}'/></interface>"
         for m in ("virtio", "e1000e", "e1000", "rtl8139")]


def variations(examples: list[bytes], rng: random.Random) -> Callable[[], bytes]:
    """A generator of example variants: each call returns a new domain XML."""
    counter = itertools.count()

    def make() -> bytes:
        text = rng.choice(examples).decode()
        k = next(counter)
        text = text.replace("</name>", f"-v{k}</name>", 1)
        devices = "".join(HOSTDEV.format(bus=0x80 + i) for i in range(rng.randint(0, 4)))
        devices += rng.choice(VIDEOS) if "<video>" not in text else ""
        devices += "".join(rng.choice(NICS) for _ in range(rng.randint(0, 3)))
        if rng.random() < 0.3 and "<iommu" not in text:
            devices += "<iommu model='intel'/>"
        text = text.replace("</devices>", devices + "</devices>", 1)
        mem = rng.choice([1, 2, 4, 8, 16, 64, 256])
        text = _replace_memory(text, mem)
        return text.encode()

    return make


def _replace_memory(text: str, gib: int) -> str:
    start = text.find("<memory")
    if start < 0 or text.find("<memory model") == start:
        return text
    end = text.find("</memory>", start)
    return text[:start] + f"<memory unit='GiB'>{gib}" + text[end:]


def corpus_domains(limit: int, pinned: hostmod.HostFacts) -> list[bytes]:
    if not CORPUS.is_dir():
        return []
    out = []
    for path in sorted(CORPUS.rglob("*.xml")):
        data = path.read_bytes()
        try:
            parse_domain(data)
        except InputError:
            continue
        out.append(data)
    random.Random(1).shuffle(out)
    return out[:limit]


def domains(n: int, pinned: hostmod.HostFacts) -> list[bytes]:
    rng = random.Random(42)
    examples = [p.read_bytes() for p in sorted(EXAMPLES.glob("*.xml"))]
    out = list(examples)
    out += corpus_domains((n - len(out)) * 2 // 3, pinned)
    make = variations(examples, rng)
    while len(out) < n:
        out.append(make())
    return out[:n]


def best_of(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5, help="best of R timings per domain")
    ap.add_argument("--profile", action="store_true", help="cProfile the estimate loop")
    args = ap.parse_args()

    pinned = hostmod.collect(override=PINNED_HOST)
    settings = Settings()
    xmls = domains(args.n, pinned)

    def estimate(data: bytes) -> object:
        return assess(parse_domain(data), pinned, settings)  # as `estimate` calls it

    for data in xmls[:50]:  # warm up imports and caches
        estimate(data)
        etree.fromstring(data)

    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        for data in xmls:
            estimate(data)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)

    parse_t, est_t, json_t, ratios = [], [], [], []
    phases: dict[str, list[float]] = {k: [] for k in PHASES}
    for data in xmls:
        p = best_of(lambda d=data: etree.fromstring(d), args.repeat)
        e = best_of(lambda d=data: estimate(d), args.repeat)
        j = best_of(lambda d=data: to_dict(estimate(d)), args.repeat)  # type: ignore[arg-type]
        parse_t.append(p)
        est_t.append(e)
        json_t.append(j)
        ratios.append(e / p)
        root = xmlsafe.parse(data, what="domain XML")
        domain = Domain.from_xml(root)
        phases["hardened parse (xmlsafe)"].append(
            best_of(lambda d=data: xmlsafe.parse(d, what="domain XML"), args.repeat))
        phases["domain model"].append(best_of(lambda r=root: Domain.from_xml(r), args.repeat))
        phases["ledger (estimators)"].append(
            best_of(lambda d=domain: build_ledger(d, pinned), args.repeat))
        phases["assess (ledger+baselines+verdict)"].append(
            best_of(lambda d=domain: assess(d, pinned, settings), args.repeat))

    med_p, med_e, med_j = (statistics.median(t) for t in (parse_t, est_t, json_t))
    ratio = med_e / med_p
    print(f"domains: {len(xmls)} (examples, libvirt test corpus, variations), "
          f"sizes {min(map(len, xmls))}..{max(map(len, xmls))} bytes")
    print(f"median lxml parse alone:      {med_p * 1e6:8.1f} us")
    print(f"median estimate (parse+judge): {med_e * 1e6:8.1f} us")
    print(f"median estimate + JSON dict:   {med_j * 1e6:8.1f} us")
    for name, times in phases.items():
        med = statistics.median(times)
        print(f"  phase {name + ':':36s} {med * 1e6:8.1f} us  ({med / med_p:.2f}x parse)")
    print(f"median per-domain ratio:       {statistics.median(ratios):8.2f}x")
    print(f"ratio (median estimate / median parse): {ratio:.2f}x "
          f"(target <= {TARGET:.0f}x: {'met' if ratio <= TARGET else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
