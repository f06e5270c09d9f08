"""Every hostile input of tests/unit/hostile_cases.py through the real CLI, in a subprocess.

`memlock-guard estimate --xml` must exit 2 with exactly one line on stderr that names
the problem, print nothing on stdout, never a traceback, and never any part of a file
the input points at (a secret file, /etc/passwd). Timing and memory are measured by
bench/hostile_inputs.py, not asserted here.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .hostile_cases import CASES, POLICY_CASES, Case, Ctx, by_name

PASSWD_FIRST_LINE = Path("/etc/passwd").read_text().splitlines()[0]


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A local TCP port that records whether anything connected to it."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    s.setblocking(False)
    yield s
    s.close()


def _connected(s: socket.socket) -> bool:
    try:
        conn, _ = s.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def run_cli(ctx: Ctx, xml: str, stdin: bytes | None, *extra: str,
            fmt: str = "text") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "memlock_guard.cli", "estimate", "--xml", xml,
         "--host-facts", str(ctx.host_file), "--format", fmt, *extra],
        input=stdin, capture_output=True, timeout=60)


def check_case(case: Case, ctx: Ctx, p: subprocess.CompletedProcess[bytes]) -> None:
    out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
    for text in (out, err):
        assert "Traceback" not in text
        assert ctx.secret not in text
        assert PASSWD_FIRST_LINE not in text
    assert p.returncode == case.exit, err
    if case.exit == 2:
        assert out == ""
        assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
        assert err.startswith("memlock-guard: ")
        assert case.message in err, err
    else:
        assert err == ""
        assert case.message in out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input_via_cli(case: Case, tmp_path: Path, listener: socket.socket) -> None:
    ctx = Ctx(tmp_path, port=listener.getsockname()[1])
    inp = case.build(ctx)
    check_case(case, ctx, run_cli(ctx, inp.xml, inp.stdin))
    assert not _connected(listener), "the parser opened a network connection"


@pytest.mark.parametrize("name", ["xxe-file", "wrong-root", "overflow-vram"])
def test_hostile_input_on_stdin_too(name: str, tmp_path: Path) -> None:
    """The same refusal whether the XML comes from a file or from stdin (the hook's way)."""
    case = by_name(name)
    ctx = Ctx(tmp_path)
    inp = case.build(ctx)
    check_case(case, ctx, run_cli(ctx, "-", Path(inp.xml).read_bytes()))


def test_symlink_to_a_secret_never_shows_its_content(tmp_path: Path) -> None:
    ctx = Ctx(tmp_path)
    link = tmp_path / "domain.xml"
    link.symlink_to(ctx.secret_file)
    p = run_cli(ctx, str(link), None)
    assert p.returncode == 2
    assert ctx.secret not in (p.stdout + p.stderr).decode()
    assert p.stderr.decode().count("\n") == 1


def test_a_secret_shaped_like_xml_is_not_quoted(tmp_path: Path) -> None:
    """A file that is a bare word in angle brackets: libxml2 would name it as a tag."""
    ctx = Ctx(tmp_path)
    f = ctx.file("tag.xml", f"{ctx.secret}".encode())
    p = run_cli(ctx, str(f), None)
    assert p.returncode == 2
    assert ctx.secret not in (p.stdout + p.stderr).decode()


def _json(ctx: Ctx, case: Case) -> dict:  # type: ignore[type-arg]
    inp = case.build(ctx)
    p = run_cli(ctx, inp.xml, inp.stdin, fmt="json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)  # type: ignore[no-any-return]


def test_1000_hostdevs_share_one_container(tmp_path: Path) -> None:
    r = _json(Ctx(tmp_path), by_name("1000-hostdevs"))
    assert r["containers"]["count"] == 1
    ram = next(i for i in r["items"] if i["source"] == "guest RAM")
    assert ram["bytes"] == 4 * 1024**3 and ram["containers"] == 1
    # libvirt 9.0 (pinned): one shared container -> 1 x memory + 1 GiB.
    assert r["baselines"]["libvirt"]["bytes"] == 5 * 1024**3


def test_1000_hostdevs_behind_a_viommu_are_1000_containers(tmp_path: Path) -> None:
    r = _json(Ctx(tmp_path), by_name("1000-hostdevs-viommu"))
    assert r["containers"]["count"] == 1000
    ram = next(i for i in r["items"] if i["source"] == "guest RAM")
    assert ram["charged_bytes"] == 1000 * 4 * 1024**3
    assert r["baselines"]["libvirt"]["bytes"] == 1000 * 4 * 1024**3 + 1024**3
    assert r["required_bytes"]["strict"] >= 1000 * 4 * 1024**3


@pytest.mark.parametrize("name", POLICY_CASES)
def test_broken_policy_via_cli(name: str, tmp_path: Path) -> None:
    """``check --policy`` loads the policy before contacting libvirt: exit 2, one line."""
    ctx = Ctx(tmp_path)
    make, _on_error, why = POLICY_CASES[name]
    path = make(ctx)
    p = subprocess.run(
        [sys.executable, "-m", "memlock_guard.cli", "check", "--policy", str(path), "--all",
         "--connect", "test:///default"],
        capture_output=True, timeout=60)
    out, err = p.stdout.decode(), p.stderr.decode()
    assert p.returncode == 2, err
    assert out == "" and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("memlock-guard: policy ") and why in err, err
    assert PASSWD_FIRST_LINE not in err
