"""Robustness and consistency over libvirt 10.7's own test corpus (~2,355 domain XMLs).

1. Every file is either estimated (the report builds and its JSON validates against
   the schema) or refused with one InputError line; nothing else may escape.
2. libvirt's test suite keeps, next to many inputs ``foo.xml``, its own parse of them
   (``foo.<arch>-latest.xml``: defaults filled in, addresses and controllers added).
   Both must give the same libvirt limit and the same ledger: that is the check that
   we apply libvirt's post-parse defaults (default video, default PHB, NIC models ...)
   the way libvirt does.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from memlock_guard.accounting.engine import build_ledger
from memlock_guard.accounting.report import Settings, assess
from memlock_guard.baselines.libvirt import libvirt_limit
from memlock_guard.commands import render
from memlock_guard.domain import Domain, parse_domain
from memlock_guard.host import probe as hostmod
from memlock_guard.plugins import manager as plugins
from memlock_guard.support.errors import InputError

from ..conftest import CORPUS, PINNED_HOST
from .test_pseries_phbs import VIRTPCIMOCK_GROUPS
from .test_schema import check_report

pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus not present at {CORPUS}")

FILES = sorted(CORPUS.rglob("*.xml")) if CORPUS.is_dir() else []
LIBVIRT = (10, 7, 0)

# Pairs where our reading knowingly differs from libvirt's, and why.
KNOWN_LEDGER_DIFFERENCES = {
    # vexpress has no PCI bus: libvirt puts virtio-net on virtio-mmio (no option ROM);
    # without an address we assume PCI and count efi-virtio.rom (an over-count).
    "arm-vexpressa9-virtio",
}
KNOWN_PPC64_DIFFERENCES = {
    # 32 devices overflow PHB 0's 31 slots: libvirt adds a PHB; not modelled.
    "pseries-many-devices",
}


@pytest.fixture(scope="module")
def host() -> hostmod.HostFacts:
    return hostmod.collect(override=PINNED_HOST)


def test_the_corpus_is_there():
    assert len(FILES) > 2000


def test_every_file_is_estimated_or_refused_with_one_line(host):
    pm = plugins.manager()  # one manager for the whole corpus; it checks every exposure
    start = time.perf_counter()
    estimated, refused, escaped = 0, 0, []
    for path in FILES:
        try:
            report = assess(parse_domain(path.read_bytes()), host, Settings(), pm)
            doc = json.loads(render.to_json(report))
        except InputError as e:
            msg = str(e)
            if not msg or "\n" in msg or len(msg) > 500:
                escaped.append(f"{path.name}: InputError is not one short line: {msg!r}")
            refused += 1
            continue
        except Exception as e:  # the point of this test: nothing else may escape
            escaped.append(f"{path.name}: {type(e).__name__}: {e}")
            continue
        try:
            check_report(doc)
        except Exception as e:
            escaped.append(f"{path.name}: report invalid: {str(e).splitlines()[0]}")
            continue
        estimated += 1
    elapsed = time.perf_counter() - start
    assert not escaped, "\n".join(escaped[:20])
    assert estimated + refused == len(FILES)
    assert estimated > 0.95 * len(FILES), f"only {estimated} of {len(FILES)} estimated"
    assert elapsed < 60, f"the corpus took {elapsed:.1f} s"


def _pairs() -> list[tuple[str, Path, Path]]:
    by_name = {p.name: p for p in FILES}
    out = []
    for name, latest in sorted(by_name.items()):
        m = re.fullmatch(r"(.+)\.([a-z0-9_]+)-latest\.xml", name)
        if m and f"{m.group(1)}.xml" in by_name:
            out.append((m.group(1), by_name[f"{m.group(1)}.xml"], latest))
    return out


def _both(src: Path, latest: Path, kvm: bool = False) -> tuple[Domain, Domain] | None:
    def load(p: Path) -> Domain:
        data = p.read_bytes()
        if kvm:  # libvirt's tests use TCG; the ppc64 formula only applies to KVM
            data = re.sub(rb"<domain type=['\"]qemu['\"]", b"<domain type='kvm'", data)
        return parse_domain(data)

    try:
        return load(src), load(latest)
    except InputError:
        return None


def test_input_and_libvirts_own_parse_give_the_same_ledger_and_limit(host):
    pm = plugins.manager()
    pairs = _pairs()
    assert len(pairs) > 900
    differ = []
    for stem, src, latest in pairs:
        both = _both(src, latest)
        if both is None:
            continue
        a, b = both
        la, lb = (libvirt_limit(d, LIBVIRT, at_start=False).bytes for d in both)
        if la != lb:
            differ.append(f"{stem}: libvirt limit {la} != {lb}")
        ia, ib = (sorted((i.bytes, i.backing, i.kind) for i in build_ledger(d, host, pm).items)
                  for d in (a, b))
        if ia != ib and stem not in KNOWN_LEDGER_DIFFERENCES:
            differ.append(f"{stem}: ledger {sorted(set(ia) ^ set(ib))[:4]}")
    assert not differ, "\n".join(differ[:20])


def test_pseries_inputs_and_libvirts_parse_agree_under_kvm():
    pairs = [p for p in _pairs() if p[2].name.endswith(".ppc64-latest.xml")]
    assert len(pairs) > 40
    differ, known = [], []
    for stem, src, latest in pairs:
        both = _both(src, latest, kvm=True)
        if both is None:
            continue
        # The IOMMU groups libvirt's tests see (virpcimock), as host facts would give.
        la, lb = (libvirt_limit(d, LIBVIRT, at_start=False,
                                iommu_groups=VIRTPCIMOCK_GROUPS).bytes for d in both)
        if la != lb:
            (known if stem in KNOWN_PPC64_DIFFERENCES else differ).append(stem)
    assert not differ, differ
    # A known difference that went away should leave the list too.
    assert set(known) == KNOWN_PPC64_DIFFERENCES
