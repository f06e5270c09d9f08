"""The .deb and the source RPM, built for real from a clean clone of this repository.

Builds need no lock: they touch nothing outside their temporary directories (except
that build-deb.sh, as root, installs missing build dependencies with apt). Installing the
.deb puts a hook into /etc/libvirt/hooks, so those tests hold the e2e lock
(test_deb_e2e.py). Under CI (CI=true) a tool that is missing or a build that cannot run
fails the tests; elsewhere they are skipped with the reason.

The clone is of HEAD: commit a change to the packaging before these tests can see it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..conftest import IN_CI, ROOT

PACKAGE = "memlock-guard"
# Built from HEAD, with only the Debian version and the conffile's first comment line
# changed: the "previous version" an upgrade starts from.
PREVIOUS_VERSION = "0.1.0~prev1"
PREVIOUS_POLICY_MARK = "memlock-guard host policy (as shipped by the previous version)."


def unavailable(why: str) -> None:
    if IN_CI:
        pytest.fail(f"packaging: {why}")
    pytest.skip(f"packaging: {why}")


def run(*cmd: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                       timeout=timeout, env=None if env is None else {**os.environ, **env},
                       stdin=subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n"
                             f"{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def version() -> str:
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as f:
        return str(tomllib.load(f)["project"]["version"])


@dataclass(frozen=True)
class Built:
    path: Path
    seconds: float
    log: str


def clean_clone(dest: Path) -> Path:
    if shutil.which("git") is None:
        unavailable("git is not installed (scripts/setup.sh --with-packaging)")
    run("git", "clone", "--quiet", "--no-hardlinks", ROOT, dest, timeout=300)
    return dest


def build_deb(tree: Path, outdir: Path, *, nocheck: bool = False) -> Built:
    import time

    if os.geteuid() != 0 and shutil.which("dpkg-buildpackage") is None:
        unavailable("dpkg-buildpackage is missing and only root may install it")
    outdir.mkdir(parents=True, exist_ok=True)
    outdir.chmod(0o755)  # apt's _apt user reads the .deb from here
    env = {"DEB_BUILD_OPTIONS": "nocheck"} if nocheck else {}
    t0 = time.monotonic()
    p = run("bash", tree / "packaging" / "build-deb.sh", outdir, env=env, check=False)
    seconds = time.monotonic() - t0
    log = (outdir / "build-deb.log").read_text() if (outdir / "build-deb.log").exists() else ""
    assert p.returncode == 0, f"build-deb.sh failed: {p.stderr.strip()}\n{log[-4000:]}"
    path = Path(p.stdout.strip().splitlines()[-1])
    assert path.is_file(), p.stdout
    return Built(path, seconds, log)


@pytest.fixture(scope="session")
def packaging_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("packaging")
    d.chmod(0o755)
    return d


@pytest.fixture(scope="session")
def clone(packaging_tmp: Path) -> Path:
    return clean_clone(packaging_tmp / "src")


@pytest.fixture(scope="session")
def deb(clone: Path, packaging_tmp: Path) -> Built:
    """memlock-guard_VERSION_all.deb, built by packaging/build-deb.sh from a clean clone."""
    return build_deb(clone, packaging_tmp / "deb")


@pytest.fixture(scope="session")
def previous_deb(packaging_tmp: Path) -> Built:
    """The same tree at a lower Debian version, with a different conffile: an upgrade from
    it to ``deb`` has a changed policy.xml on both sides when the operator edited it."""
    tree = clean_clone(packaging_tmp / "src-previous")
    changelog = tree / "packaging" / "debian" / "changelog"
    text = changelog.read_text()
    first = text.splitlines()[0]
    assert re.match(rf"{PACKAGE} \({re.escape(version())}\) ", first), first
    changelog.write_text(text.replace(f"({version()})", f"({PREVIOUS_VERSION})", 1))
    policy = tree / "packaging" / "policy.xml"
    policy.write_text(policy.read_text().replace("memlock-guard host policy.",
                                                 PREVIOUS_POLICY_MARK, 1))
    return build_deb(tree, packaging_tmp / "deb-previous", nocheck=True)


@pytest.fixture(scope="session")
def srpm(clone: Path, packaging_tmp: Path) -> Path:
    if os.geteuid() != 0 and shutil.which("rpmbuild") is None:
        unavailable("rpmbuild is missing and only root may install it")
    out = packaging_tmp / "srpm"
    p = run("bash", clone / "packaging" / "build-srpm.sh", out, check=False)
    assert p.returncode == 0, f"build-srpm.sh failed: {p.stderr.strip()}"
    path = Path(p.stdout.strip().splitlines()[-1])
    assert path.is_file() and path.name.startswith(f"{PACKAGE}-{version()}-")
    return path


@pytest.fixture(scope="session")
def deb_tree(deb: Built, packaging_tmp: Path) -> Path:
    """The .deb's data, unpacked (dpkg-deb -x)."""
    d = packaging_tmp / "deb-tree"
    if not d.exists():
        run("dpkg-deb", "-x", deb.path, d)
    return d


def deb_paths(deb_file: Path) -> list[tuple[str, str]]:
    """(type, path) of every entry in the .deb: 'd' directory, 'l' symlink, '-' file."""
    listing = run("dpkg-deb", "-c", deb_file).stdout
    entries = []
    for line in listing.splitlines():
        kind = line[0]
        path = line.split(None, 5)[5].split(" -> ")[0]
        path = "/" + path.lstrip("./")
        if path != "/":
            entries.append((kind, path.rstrip("/")))
    return entries


@pytest.fixture(scope="session")
def rendered_hook() -> str:
    """What install-hook writes for /usr/bin/python3 (--print: the same render())."""
    import sys

    return run(sys.executable, "-m", "memlock_guard.cli", "install-hook", "--print",
               "--python", "/usr/bin/python3").stdout
