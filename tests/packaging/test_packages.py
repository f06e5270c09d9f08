"""The .deb and the source RPM as files: what they hold, lintian and rpmlint, and that
the .deb, the spec and install-hook put the same hook in the same place."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import ROOT
from .conftest import PACKAGE, Built, clean_clone, deb_paths, run, unavailable, version

pytestmark = pytest.mark.packaging

HOOK = "/etc/libvirt/hooks/qemu.d/50-memlock-guard"
HOOK_TARGET = "/usr/libexec/memlock-guard/qemu-hook"
POLICY = "/etc/memlock-guard/policy.xml"
# Debian's own package metadata, which an RPM carries in its header instead.
DEBIAN_ONLY = {f"/usr/share/doc/{PACKAGE}/changelog.gz", f"/usr/share/doc/{PACKAGE}/copyright"}
# The spec's macros, expanded to the paths Debian uses for the same things (Fedora:
# python3_sitelib /usr/lib/python3.X/site-packages, _unitdir /usr/lib/systemd/system,
# which merged /usr makes the same directory as /lib/systemd/system).
AS_ON_DEBIAN = {
    "python3": "/usr/bin/python3",
    "python3_sitelib": "/usr/lib/python3/dist-packages",
    "_unitdir": "/lib/systemd/system",
    "_sharedstatedir": "/var/lib",
}
SPEC = ROOT / "packaging" / "rpm" / "memlock-guard.spec"


def test_the_deb_builds_from_a_clean_clone(deb: Built):
    assert deb.path.name == f"{PACKAGE}_{version()}_all.deb"
    assert "dpkg-buildpackage: info: binary-only upload" in deb.log
    assert re.search(r"smoke test: python3\.\d+ estimated \d+ examples", deb.log), \
        "the build-time smoke test did not run"
    print(f"build-deb.sh: {deb.seconds:.1f} s")


def test_it_depends_on_debians_own_python_packages(deb: Built):
    depends = run("dpkg-deb", "-f", deb.path, "Depends").stdout
    for name in ("python3-lxml", "python3-pluggy", "python3-libvirt", "python3-tenacity"):
        assert re.search(rf"(^|, ){name}( \(|,|$)", depends.strip()), depends
    assert "pip" not in depends


def test_what_the_deb_installs(deb: Built, deb_tree: Path, rendered_hook: str):
    entries = dict((path, kind) for kind, path in deb_paths(deb.path))
    assert entries["/usr/bin/memlock-guard"] == "-"
    assert entries["/usr/lib/python3/dist-packages/memlock_guard/__init__.py"] == "-"
    assert entries[HOOK] == "l"
    assert (deb_tree / HOOK.lstrip("/")).readlink() == Path(HOOK_TARGET)
    hook = deb_tree / HOOK_TARGET.lstrip("/")
    assert hook.read_text() == rendered_hook
    assert hook.read_text().startswith("#!/usr/bin/python3 -IS\n")
    assert hook.stat().st_mode & 0o777 == 0o755
    for schema in ("policy.rng", "applied.rng", "estimate.schema.json"):
        assert entries[f"/usr/share/memlock-guard/{schema}"] == "-"
    assert entries["/lib/systemd/system/memlock-guard-watch.service"] == "-"
    assert entries["/var/lib/memlock-guard"] == entries["/var/log/memlock-guard"] == "d"
    verbs = [v.replace("_", "-") for v in __import__(
        "memlock_guard.commands", fromlist=["VERBS"]).VERBS]
    for page in [PACKAGE, *(f"{PACKAGE}-{v}" for v in verbs)]:
        assert entries[f"/usr/share/man/man1/{page}.1.gz"] == "-", page
    conffiles = run("sh", "-c", f"dpkg-deb --ctrl-tarfile {deb.path} | tar -xO ./conffiles")
    assert conffiles.stdout.split() == [POLICY]  # the hook is a symlink: not a conffile
    # The unit is installed, not enabled: no enable in postinst, only the state update.
    postinst = run("sh", "-c", f"dpkg-deb --ctrl-tarfile {deb.path} | tar -xO ./postinst")
    assert "deb-systemd-helper enable 'memlock-guard-watch.service'" in postinst.stdout
    assert "was-enabled" in postinst.stdout  # ... only where an operator had enabled it


def test_the_packaged_policy_is_the_built_in_defaults(deb_tree: Path):
    """Loaded by the package's own loader, as shipped and with every setting uncommented:
    the comments show the defaults, so both must equal them."""
    from memlock_guard.policy import load as pol
    from memlock_guard.policy.model import DEFAULTS, Policy

    path = deb_tree / POLICY.lstrip("/")
    shipped = pol.load(str(path))
    assert shipped._replace(origin=DEFAULTS.origin) == DEFAULTS
    text = path.read_text()
    setting = re.compile(r"^(\s*)<!-- (<[a-z-]+[ />].*?) -->$", re.M)
    # Every setting with a built-in value (not origin and overridden, and not the
    # KubeVirt ones, whose None means "not said": the file shows them in prose).
    shown = [f for f in Policy._fields
             if f not in ("origin", "overridden") and getattr(DEFAULTS, f) is not None]
    assert len(setting.findall(text)) == len(shown)
    uncommented = pol.parse(setting.sub(r"\1\2", text).encode(), what="uncommented")
    assert uncommented._replace(origin=DEFAULTS.origin) == DEFAULTS
    assert "--" not in re.sub(r"<!--|-->", "", text)  # XML comments cannot hold it


def test_lintian_reports_no_errors(deb: Built):
    if subprocess.run(["sh", "-c", "command -v lintian"], capture_output=True).returncode:
        unavailable("lintian is not installed (scripts/setup.sh --with-packaging)")
    p = run("lintian", "--pedantic", "--display-info", deb.path, check=False)
    tags = [line for line in p.stdout.splitlines() if re.match(r"[EWIPX]: ", line)]
    errors = [t for t in tags if t.startswith("E: ")]
    assert not errors, "\n".join(tags)
    # Every warning left is explained in README.source.
    readme = (ROOT / "packaging" / "debian" / "README.source").read_text()
    for t in tags:
        if t.startswith("W: "):
            tag = t.split()[2]
            assert tag in readme, f"lintian warning {tag} is not explained in README.source"
    print("lintian:", "\n".join(tags) or "clean")


def expanded_spec(**defines: str) -> str:
    args = [a for k, v in {**AS_ON_DEBIAN, **defines}.items() for a in ("--define", f"{k} {v}")]
    return run("rpmspec", "-P", *args, SPEC).stdout


def section(spec: str, name: str) -> list[str]:
    lines = spec.splitlines()
    start = lines.index(name) + 1
    end = next((i for i in range(start, len(lines))
                if re.match(r"%(files|changelog|post|preun|postun|check|install|build|prep|"
                            r"generate_buildrequires)\b", lines[i])), len(lines))
    return lines[start:end]


def spec_files() -> list[tuple[str, str]]:
    """(directives, path pattern) of every %files line."""
    out = []
    for line in section(expanded_spec(), "%files"):
        if not line.strip() or line.startswith("#"):
            continue
        directives = re.findall(r"%\w+(?:\([^)]*\))?", line)
        path = re.sub(r"%\w+(?:\([^)]*\))?\s*", "", line).strip()
        if "%doc" in directives:
            path = f"/usr/share/doc/{PACKAGE}/{path}"
        out.append((" ".join(directives), path))
    return out


def covers(pattern: str, path: str) -> bool:
    if pattern.endswith("/"):
        return path == pattern.rstrip("/") or path.startswith(pattern)
    return fnmatch.fnmatchcase(path, pattern)


def needs_rpmspec() -> None:
    if subprocess.run(["sh", "-c", "command -v rpmspec"], capture_output=True).returncode:
        unavailable("rpmspec is not installed (scripts/setup.sh --with-packaging)")


@pytest.fixture(scope="module")
def spec_root(clone: Path, packaging_tmp: Path) -> Path:
    """The spec's own %build and %install shell steps, run here in the clean clone with
    %{buildroot} in a temporary directory. Only the Fedora macros (%pyproject_wheel,
    %pyproject_install: the Python package) are left out."""
    needs_rpmspec()
    root = packaging_tmp / "rpm-buildroot"
    spec = expanded_spec(buildroot=str(root))
    for name in ("%build", "%install"):
        script = "\n".join(line for line in section(spec, name) if not line.startswith("%"))
        run("bash", "-euc", script, cwd=clone)
    return root


def in_tree(tree: Path, path: str) -> Path:
    """Where ``path`` leads inside an unpacked package tree, following its symlinks."""
    p = tree / path.lstrip("/")
    while p.is_symlink():
        target = p.readlink()
        p = tree / str(target).lstrip("/") if target.is_absolute() else p.parent / target
    return Path(os.path.normpath(p))


def deb_files(deb: Built) -> tuple[list[str], set[str]]:
    """The .deb's files and symlinks (Debian-only metadata left out; documentation and
    man pages without the .gz that dh_compress adds and rpm's brp-compress adds after
    %install), and its directories."""
    entries = deb_paths(deb.path)
    files = [re.sub(r"^(/usr/share/(doc|man)/.*)\.gz$", r"\1", p) for kind, p in entries
             if kind != "d" and p not in DEBIAN_ONLY]
    return files, {p for kind, p in entries if kind == "d"}


def test_the_spec_and_the_deb_name_the_same_paths(deb: Built):
    needs_rpmspec()
    files, dirs = deb_files(deb)
    spec = spec_files()
    patterns = [p for _, p in spec]
    uncovered = [p for p in files if not any(covers(pat, p) for pat in patterns)]
    assert not uncovered, f"in the .deb, not in the spec's %files: {uncovered}"
    unmatched = [pat for pat in patterns
                 if not any(covers(pat, p) for p in files + sorted(dirs))]
    assert not unmatched, f"in the spec's %files, not in the .deb: {unmatched}"
    # The directories the package owns are the same (the .deb also lists shared parents).
    ours = {d for d in dirs if re.search(r"memlock[-_]guard", d)} | {"/etc/libvirt/hooks/qemu.d"}
    spec_dirs = {p.rstrip("/") for d, p in spec if "%dir" in d or p.endswith("/")}
    if any("%doc" in d for d, _ in spec):
        spec_dirs.add(f"/usr/share/doc/{PACKAGE}")
    owned = {d for d in dirs if any(covers(s + "/", d) for s in spec_dirs)}
    assert ours == owned, f"directories: .deb {sorted(ours)} vs spec {sorted(spec_dirs)}"
    assert ("%config(noreplace)", POLICY) in spec
    assert any("%attr(0750,root,root)" in d and p == "/var/log/memlock-guard" for d, p in spec)


def test_the_spec_installs_what_the_deb_holds(deb: Built, deb_tree: Path, spec_root: Path):
    """Every file the spec's %install writes is in its %files and in the .deb, with the
    same bytes (man pages but for their date), the hook included."""
    import gzip

    patterns = [p for _, p in spec_files()]
    written = sorted("/" + str(p.relative_to(spec_root)) for p in spec_root.rglob("*")
                     if p.is_file() or p.is_symlink())
    assert written
    files, _ = deb_files(deb)
    for path in written:
        assert any(covers(pat, path) for pat in patterns), f"{path}: not in %files"
        ours, theirs = spec_root / path.lstrip("/"), deb_tree / path.lstrip("/")
        if ours.is_symlink():
            assert in_tree(spec_root, path) == in_tree(spec_root, HOOK_TARGET), path
            assert theirs.is_symlink() and in_tree(deb_tree, path) == in_tree(deb_tree,
                                                                             HOOK_TARGET)
        elif path.startswith("/usr/share/man/"):
            page = gzip.decompress(theirs.with_name(theirs.name + ".gz").read_bytes()).decode()
            assert ours.read_text().split("\n", 1)[1] == page.split("\n", 1)[1], path
        else:
            assert ours.read_bytes() == theirs.read_bytes(), path
            assert ours.stat().st_mode & 0o777 == theirs.stat().st_mode & 0o777, path
        assert path in files, f"{path}: not in the .deb"


def test_the_same_hook_everywhere(deb_tree: Path, spec_root: Path, rendered_hook: str):
    """The .deb's, the spec's and install-hook's hook are one executable (install-hook's
    own install is compared in test_deb_e2e, where writing its caches is allowed)."""
    template = (ROOT / "hooks" / "qemu").read_text()
    for tree in (deb_tree, spec_root):
        hook = in_tree(tree, HOOK)
        assert hook == in_tree(tree, HOOK_TARGET)
        assert hook.read_text() == rendered_hook
        assert os.access(hook, os.X_OK)
    # Rendered from hooks/qemu: only the #! line and the three settings are install-hook's.
    assert rendered_hook.splitlines()[1:4] == template.splitlines()[1:4]
    assert rendered_hook.startswith("#!/usr/bin/python3 -IS\n")


def test_the_srpm_builds_and_rpmlint_finds_no_error(srpm: Path):
    assert srpm.name == f"{PACKAGE}-{version()}-1.src.rpm"
    listing = run("rpm", "-qpl", srpm).stdout.split()
    assert sorted(listing) == [f"{PACKAGE}-{version()}.tar.gz", f"{PACKAGE}.spec"]
    if subprocess.run(["sh", "-c", "command -v rpmlint"], capture_output=True).returncode:
        unavailable("rpmlint is not installed (scripts/setup.sh --with-packaging)")
    # Debian's rpmlint defaults, on the spec: no error (a warning for the BuildRoot tag,
    # which Fedora's spec style leaves out).
    plain = run("rpmlint", SPEC, check=False)
    assert re.search(r"\b0 errors\b", plain.stdout), plain.stdout
    # With the settings Fedora's rpmlint uses where Debian's differ: nothing at all.
    config = ROOT / "packaging" / "rpm" / "rpmlint.toml"
    strict = run("rpmlint", "-c", config, SPEC, srpm, check=False)
    assert re.search(r"\b0 errors, 0 warnings\b", strict.stdout), strict.stdout
    assert strict.returncode == 0
    print("rpmlint (spec):", plain.stdout.strip().splitlines()[-1])
    print("rpmlint (spec + srpm, packaging/rpm/rpmlint.toml):",
          strict.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("script,file,edit,message", [
    ("build-deb.sh", "packaging/debian/changelog", ("(0.1.0)", "(9.9.9)"),
     "debian/changelog is at 9.9.9 but pyproject.toml at"),
    ("build-srpm.sh", "packaging/rpm/memlock-guard.spec", ("0.1.0", "9.9.9"),
     "the spec is at Version 9.9.9 but pyproject.toml at"),
])
def test_a_failing_build_says_why_in_one_line(packaging_tmp: Path, script: str, file: str,
                                              edit: tuple[str, str], message: str):
    tree = clean_clone(packaging_tmp / f"src-broken-{script}")
    path = tree / file
    path.write_text(path.read_text().replace(*edit, 1))
    p = run("bash", tree / "packaging" / script, packaging_tmp / f"out-{script}", check=False)
    assert p.returncode == 1
    assert p.stderr.count("\n") == 1 and message in p.stderr, p.stderr
    assert p.stdout == ""


def test_build_deb_wants_one_outdir():
    p = run("bash", ROOT / "packaging" / "build-deb.sh", check=False)
    assert p.returncode == 2 and p.stderr.startswith("usage:")


def test_the_man_pages_come_from_the_parser(tmp_path: Path):
    """packaging/manpages.py: one page per verb, each option of --help in it."""
    from memlock_guard.cli import build_parser

    p = run(sys.executable, ROOT / "packaging" / "manpages.py", tmp_path)
    pages = {Path(line).name for line in p.stdout.split()}
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "verb")
    assert pages == {f"{PACKAGE}.1"} | {f"{PACKAGE}-{v}.1" for v in sub.choices}
    for verb, vp in sub.choices.items():
        text = (tmp_path / f"{PACKAGE}-{verb}.1").read_text()
        assert text.startswith(f".TH {PACKAGE.upper()}\\-{verb.upper()} 1 ".replace("-", "\\-")
                               .replace("\\\\-", "\\-"))
        for action in vp._actions:
            for opt in action.option_strings:
                if action.help != "==SUPPRESS==":
                    assert f"\\fB{opt.replace('-', chr(92) + '-')}\\fR" in text, (verb, opt)
        assert "facts\\-only" not in text  # hidden: the packages' postinst uses it


def test_apt_resolves_the_build_dependencies(clone: Path, tmp_path: Path):
    """What build-deb.sh runs when a build dependency is missing (apt-get build-dep on the
    staged tree), simulated: apt reads debian/control and finds every package."""
    shutil.copytree(clone / "packaging" / "debian", tmp_path / "tree" / "debian")
    p = run("apt-get", "-s", "build-dep", "--no-install-recommends", tmp_path / "tree",
            check=False)
    assert p.returncode == 0, p.stderr
    assert re.search(r"\d+ newly installed", p.stdout), p.stdout


@pytest.mark.parametrize("purge_log", [False, True])
def test_postrm_purge_keeps_the_audit_log_unless_asked(tmp_path: Path, purge_log: bool):
    """debian/memlock-guard.postrm with its paths moved into a temporary directory."""
    script = (ROOT / "packaging" / "debian" / "memlock-guard.postrm").read_text()
    paths = {"/var/lib/memlock-guard": tmp_path / "state", "/var/log/memlock-guard":
             tmp_path / "log", "/etc/memlock-guard": tmp_path / "etc"}
    for real, fake in paths.items():
        script = script.replace(real, str(fake))
        fake.mkdir()
    assert "/var/" not in script.replace("#DEBHELPER#", "")
    (tmp_path / "state" / "decisions").mkdir()
    (tmp_path / "state" / "host-facts.json").write_text("{}")
    (tmp_path / "log" / "audit.jsonl").write_text("{}\n")
    env = {"MEMLOCK_GUARD_PURGE_AUDIT_LOG": "yes"} if purge_log else {}
    p = run("sh", "-c", script.replace("#DEBHELPER#", ""), "postrm", "purge", env=env)
    assert not (tmp_path / "state").exists() and not (tmp_path / "etc").exists()
    if purge_log:
        assert not (tmp_path / "log").exists() and p.stdout == ""
    else:
        assert (tmp_path / "log" / "audit.jsonl").exists()
        assert p.stdout == (f"memlock-guard: kept the audit log in {tmp_path}/log/; remove it "
                            "by hand, or purge with MEMLOCK_GUARD_PURGE_AUDIT_LOG=yes\n")
    # An empty log directory is simply removed.
    (tmp_path / "log").mkdir(exist_ok=True)
    for f in (tmp_path / "log").iterdir():
        f.unlink()
    p = run("sh", "-c", script.replace("#DEBHELPER#", ""), "postrm", "purge")
    assert not (tmp_path / "log").exists() and p.stdout == ""
