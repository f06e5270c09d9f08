"""install-hook and uninstall-hook on a host where a package installed the hook.

The package manager is asked who owns the hook (dpkg-query -S, rpm -qf). Here a fake
dpkg-query on PATH claims the hook for memlock-guard, so these run anywhere, without
installing anything; test_deb_e2e.py does the same against the real dpkg.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from memlock_guard import cli

from ..conftest import ROOT

pytestmark = pytest.mark.packaging

FAKE_DPKG_QUERY = """\
#!/bin/sh
# dpkg-query -S PATH: the packaged hook belongs to memlock-guard, nothing else is owned.
case "$2" in
    */qemu.d/50-memlock-guard) echo "memlock-guard: $2"; exit 0 ;;
    *) echo "dpkg-query: no path found matching pattern $2" >&2; exit 1 ;;
esac
"""


class Host:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.hooks = tmp / "hooks"
        self.drop_in = self.hooks / "qemu.d" / "50-memlock-guard"
        self.facts = tmp / "host-facts.json"
        self.decisions = tmp / "decisions"

    def args(self, verb: str, *extra: str) -> list[str]:
        return [verb, "--hooks-dir", str(self.hooks), "--facts-cache", str(self.facts),
                "--decision-cache", str(self.decisions), *extra]


@pytest.fixture
def packaged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Host:
    """A hooks dir whose drop-in is the package's symlink, as the .deb installs it."""
    host = Host(tmp_path)
    libexec = tmp_path / "usr-libexec-memlock-guard"
    libexec.mkdir()
    hook = libexec / "qemu-hook"
    hook.write_text((ROOT / "hooks" / "qemu").read_text())
    hook.chmod(0o755)
    host.drop_in.parent.mkdir(parents=True)
    host.drop_in.symlink_to(hook)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "dpkg-query"
    fake.write_text(FAKE_DPKG_QUERY)
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return host


def test_install_hook_says_the_package_installed_it(packaged: Host, capsys: Any):
    target = os.readlink(packaged.drop_in)
    for extra in ((), ("--as-main-script",), ("--policy", "/etc/elsewhere.xml")):
        assert cli.main(packaged.args("install-hook", *extra)) == 0
        out = capsys.readouterr().out
        assert (f"{packaged.drop_in} was installed by the memlock-guard (dpkg) package, "
                "which upgrades and removes it: not writing a second copy") in out
        assert os.readlink(packaged.drop_in) == target
        assert sorted(os.listdir(packaged.hooks)) == ["qemu.d"]
        assert sorted(os.listdir(packaged.drop_in.parent)) == ["50-memlock-guard"]
    # It still does what install-hook is re-run for: the host facts cache.
    assert json.loads(packaged.facts.read_text()).keys() >= {"libvirt_version", "qemu_version"}


def test_uninstall_hook_leaves_the_package_hook_and_its_caches(packaged: Host, capsys: Any):
    packaged.facts.write_text("{}")
    packaged.decisions.mkdir()
    assert cli.main(packaged.args("uninstall-hook")) == 0
    out = capsys.readouterr().out
    assert (f"left {packaged.drop_in} alone: the memlock-guard (dpkg) package installed it"
            in out)
    assert packaged.drop_in.is_symlink() and packaged.facts.exists()
    assert packaged.decisions.is_dir()
    assert "nothing to remove" not in out and "restart libvirtd" not in out


def test_a_copy_install_hook_wrote_is_still_its_own(tmp_path: Path, capsys: Any):
    """Without a package owning it, install-hook's file is replaced and removed as before
    (dpkg-query, where it exists, says it owns nothing in a temporary directory)."""
    host = Host(tmp_path)
    assert cli.main(host.args("install-hook")) == 0
    assert cli.main(host.args("install-hook")) == 0
    assert "second copy" not in capsys.readouterr().out
    assert host.drop_in.is_file() and not host.drop_in.is_symlink()
    assert cli.main(host.args("uninstall-hook")) == 0
    assert not host.drop_in.exists()


def test_print_writes_the_hook_to_stdout_and_nothing_else(tmp_path: Path, capsys: Any):
    host = Host(tmp_path)
    assert cli.main(host.args("install-hook", "--print", "--python", "/usr/bin/python3",
                              "--policy", "/etc/p.xml")) == 0
    out = capsys.readouterr().out
    assert out.startswith("#!/usr/bin/python3 -IS\n") and "POLICY: str | None = '/etc/p.xml'" in out
    assert f"FACTS: str | None = {str(host.facts)!r}" in out
    assert sorted(os.listdir(tmp_path)) == []


def test_facts_only_caches_the_facts_and_installs_nothing(tmp_path: Path, capsys: Any):
    host = Host(tmp_path)
    host.decisions.mkdir()
    (host.decisions / "old.json").write_text("{}")
    assert cli.main(host.args("install-hook", "--facts-only")) == 0
    assert host.facts.exists() and not host.hooks.exists()
    assert list(host.decisions.iterdir()) == []  # an earlier version's answers are dropped
    assert "--facts-only" not in (capsys.readouterr().out)
