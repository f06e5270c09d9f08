"""packaging/systemd/memlock-guard-watch.service: ordering, restarts, hardening that
still lets the reconciler reach the libvirt socket."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ..conftest import ROOT

UNIT = ROOT / "packaging" / "systemd" / "memlock-guard-watch.service"


def directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key}", []).append(value)
    return out


def test_ordering_and_restart() -> None:
    d = directives()
    for key in ("Unit.After", "Unit.Wants"):
        assert d[key] == ["libvirtd.service virtqemud.service"]
    # A libvirtd restart must not stop the reconciler: it reconnects by itself.
    assert "Unit.Requires" not in d and "Unit.BindsTo" not in d and "Unit.PartOf" not in d
    assert d["Service.Restart"] == ["on-failure"]
    assert d["Service.ExecStart"][0].split()[1:] == ["watch", "--connect", "qemu:///system"]
    assert d["Install.WantedBy"] == ["multi-user.target"]


def test_hardening_keeps_the_libvirt_socket_reachable() -> None:
    d = directives()
    assert d["Service.ProtectSystem"] == ["strict"]
    assert d["Service.NoNewPrivileges"] == ["yes"]
    assert d["Service.CapabilityBoundingSet"] == [""]
    # unix sockets only (the libvirt socket, /dev/log); nothing hides /run/libvirt.
    assert d["Service.RestrictAddressFamilies"] == ["AF_UNIX"]
    for key in ("InaccessiblePaths", "TemporaryFileSystem", "PrivateNetwork", "ProtectProc"):
        assert f"Service.{key}" not in d, key
    assert "/run" not in " ".join(d.get("Service.ReadOnlyPaths", []))
    assert d["Service.LogsDirectory"] == ["memlock-guard"]  # the default audit log


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_accepts_it(tmp_path: Path) -> None:
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text())
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                       capture_output=True, text=True, timeout=60)
    # The only complaint allowed: memlock-guard is not installed on this machine.
    complaints = [line for line in (r.stdout + r.stderr).splitlines()
                  if line.strip() and "is not executable" not in line]
    assert complaints == []
