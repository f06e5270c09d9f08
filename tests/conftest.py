"""Fixtures shared by unit and end-to-end tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CORPUS = ROOT.parent / "shared" / "corpus" / "libvirt-10.7.0"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# A host described completely, so unit tests do not depend on this machine.
PINNED_HOST = {
    "probe_host": False,
    "kernel_release": "6.1.0",
    "libvirt_version": "9.0.0",
    "qemu_version": "7.2.0",
    "inherited_memlock_bytes": 67108864,
    "rom_sizes": {
        "bios-256k.bin": 262144, "efi-virtio.rom": 249344, "efi-e1000.rom": 249856,
        "efi-e1000e.rom": 249856, "efi-rtl8139.rom": 249856,
        "vgabios-stdvga.bin": 39936, "vgabios-qxl.bin": 39936, "vgabios-virtio.bin": 39936,
        "vgabios-cirrus.bin": 39424, "vgabios-bochs-display.bin": 28672,
        "vgabios-vmware.bin": 39936,
    },
}


@pytest.fixture
def pinned_host():
    from memlock_guard.host import probe as host

    return host.collect(override=PINNED_HOST)


@pytest.fixture
def pinned_host_file(tmp_path: Path) -> Path:
    p = tmp_path / "host.json"
    p.write_text(json.dumps(PINNED_HOST))
    return p
