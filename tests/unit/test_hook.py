"""The libvirt hook protocol, in-process and through the installed script.

Host facts are pinned (tests/conftest.py PINNED_HOST, handed to the hook as its facts
cache), so every decision here is the same on any machine.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from memlock_guard import cli
from memlock_guard.accounting.report import Settings, assess
from memlock_guard.domain import parse_domain
from memlock_guard.domain.edit import raise_hard_limit
from memlock_guard.hook import cache as decision_cache
from memlock_guard.hook import entry as hook
from memlock_guard.host import probe as host
from memlock_guard.support.units import KiB, round_up

from ..conftest import PINNED_HOST, ROOT
from .builders import GiB, MiB, domain_xml, hostdevs

NS = "urn:memlock-guard:policy:1"


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str
    records: list[dict[str, Any]]


class Env:
    """A policy file, a pinned host-facts cache and an audit log in a scratch directory."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.policy = tmp / "policy.xml"
        self.audit = tmp / "audit.jsonl"
        self.facts = tmp / "facts.json"
        self.facts.write_text(json.dumps(PINNED_HOST))
        self.set_policy("")

    def set_policy(self, body: str) -> None:
        self.policy.write_text(f'<policy xmlns="{NS}">{body}'
                               f"<audit-log>{self.audit}</audit-log></policy>")

    def records(self) -> list[dict[str, Any]]:
        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().splitlines()]

    def run(self, op: str, xml: bytes, *, name: str = "vm", subop: str = "begin",
            **kw: Any) -> Result:
        before = len(self.records())
        out, err = io.StringIO(), io.StringIO()
        kw.setdefault("deadline", 0)
        rc = hook.run([name, op, subop, "-"], stdin=io.BytesIO(xml), stdout=out, stderr=err,
                      policy_path=str(self.policy), facts_path=str(self.facts),
                      use_syslog=False, **kw)
        return Result(rc, out.getvalue(), err.getvalue(), self.records()[before:])


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def pinned() -> host.HostFacts:
    return host.collect(override=PINNED_HOST)


def passthrough(hard_limit: int | None = None, *, name: str = "vm",
                extra: str = "") -> bytes:
    """1 GiB, one VFIO hostdev, an emulated virtio NIC (its option ROM has a zero tail)."""
    memtune = (f"<memtune><hard_limit unit='KiB'>{hard_limit // KiB}</hard_limit></memtune>"
               if hard_limit is not None else "")
    nic = "<interface type='network'><source network='default'/><model type='virtio'/>" \
          "</interface>"
    return domain_xml(hostdevs(1) + nic, name=name, extra=memtune + extra)


def required(xml: bytes, mode: str, allowance: int | None = 0) -> int:
    r = assess(parse_domain(xml), pinned(), Settings(mode=mode, zero_page_allowance=allowance))
    return r.verdict.required


def between_modes() -> tuple[bytes, int, int]:
    """A domain whose hard_limit covers tolerant accounting but not strict."""
    probe = passthrough()
    tolerant = required(probe, "tolerant", None)
    strict = required(probe, "strict")
    limit = round_up(tolerant, KiB)
    assert tolerant <= limit < strict, "the NIC ROM's zero tail must be at least 1 KiB"
    return passthrough(limit), tolerant, strict


# -- ops that do not act --------------------------------------------------------------------

@pytest.mark.parametrize(("op", "subop"), [
    ("started", "begin"), ("stopped", "end"), ("release", "end"), ("reconnect", "begin"),
    ("attach", "begin"), ("prepare", "end"), ("migrate", "end"), ("restore", "end"),
])
def test_other_ops_exit_zero_without_reading_anything(env: Env, op: str, subop: str):
    class Untouchable(io.BytesIO):
        def read(self, *a: Any) -> bytes:
            raise AssertionError("stdin must not be read")

    rc = hook.run(["vm", op, subop, "-"], stdin=Untouchable(), stdout=io.StringIO(),
                  stderr=io.StringIO(), policy_path=str(env.policy))
    assert rc == 0
    assert env.records() == []


def test_too_few_arguments_is_not_an_action():
    assert hook.run([], stdin=io.BytesIO(b"")) == 0
    assert hook.run(["vm", "prepare"], stdin=io.BytesIO(b"")) == 0


# -- prepare begin ------------------------------------------------------------------------

def test_a_domain_that_fits_is_allowed_and_logged(env: Env):
    r = env.run("prepare", passthrough())
    assert (r.rc, r.stdout, r.stderr) == (0, "", "")
    (rec,) = r.records
    assert rec["action"] == "allow" and rec["verdict"] == "fits"
    assert rec["op"] == "prepare" and rec["domain"] == "vm"
    assert rec["limit_source"] == "libvirt-formula"
    for key in ("time", "uuid", "mode", "required", "limit", "plugin_version"):
        assert key in rec


def test_a_short_domain_is_refused_with_one_paragraph(env: Env):
    env.set_policy("<mode>strict</mode>")
    xml = passthrough(GiB, name="db 1")
    r = env.run("prepare", xml, name="db 1")
    assert r.rc == 1 and r.stdout == ""
    text = r.stderr
    assert text.endswith("\n") and text.count("\n") == 1
    need = required(xml, "strict")
    rec = r.records[0]
    kib = rec["recommended_hard_limit"] // KiB
    for words in ("refused the start", "domain 'db 1'", f"({need} bytes)",
                  "strict accounting (configured)", f"({GiB} bytes)", "from hard_limit",
                  "guest RAM", f"virsh memtune 'db 1' --hard-limit {kib} --config",
                  "memlock-guard apply 'db 1'"):
        assert words in text, (words, text)
    assert rec["action"] == "refuse" and rec["verdict"] == "short"
    assert rec["required"] == need and rec["limit"] == GiB
    assert rec["message"] in text


def test_the_recommended_limit_then_passes(env: Env):
    env.set_policy("<mode>strict</mode>")
    refused = env.run("prepare", passthrough(GiB))
    fixed = env.run("prepare", passthrough(refused.records[0]["recommended_hard_limit"]))
    assert fixed.rc == 0 and fixed.records[0]["action"] == "allow"


def test_warn_lets_the_start_go_on_and_logs_the_paragraph(env: Env):
    env.set_policy("<mode>strict</mode><on-shortfall>warn</on-shortfall>")
    r = env.run("prepare", passthrough(GiB))
    assert r.rc == 0
    assert "warning" in r.stderr and "virsh memtune" in r.stderr
    assert r.records[0]["action"] == "warn"
    assert "virsh memtune" in r.records[0]["message"]


def test_strict_refuses_what_tolerant_accepts(env: Env):
    xml, tolerant, strict = between_modes()
    env.set_policy("<mode>strict</mode>")
    assert env.run("prepare", xml).rc == 1
    env.set_policy("<mode>tolerant</mode><zero-page-allowance>unlimited</zero-page-allowance>")
    r = env.run("prepare", xml)
    assert r.rc == 0 and r.records[0]["required"] == tolerant < strict


def test_a_domain_can_relax_itself_through_metadata(env: Env):
    env.set_policy("<mode>strict</mode>")
    meta = (f'<metadata><mg:policy xmlns:mg="{NS}"><mg:on-shortfall>warn</mg:on-shortfall>'
            f"</mg:policy></metadata>")
    r = env.run("prepare", passthrough(GiB, extra=meta))
    assert r.rc == 0 and r.records[0]["action"] == "warn"
    assert "vm's <metadata>" in r.records[0]["policy"]


def test_a_domain_cannot_switch_off_the_fail_safe(env: Env):
    env.set_policy("<mode>strict</mode><on-error>refuse</on-error>")
    meta = f'<metadata><mg:policy xmlns:mg="{NS}"><mg:on-error>allow</mg:on-error>' \
           f"</mg:policy></metadata>"
    r = env.run("prepare", passthrough(GiB, extra=meta))
    assert r.rc == 1 and "host policy file" in r.stderr
    assert r.records[0]["verdict"] == "error"


# -- migrate begin / restore begin ------------------------------------------------------------

def canonical_without_memtune(xml: str | bytes) -> bytes:
    root = etree.fromstring(xml.encode() if isinstance(xml, str) else xml)
    for m in root.findall("memtune"):
        root.remove(m)
    for el in root.iter():
        el.text = el.text.strip() if el.text and not el.text.strip() else el.text
        el.tail = None
    return etree.tostring(root, method="c14n")


@pytest.mark.parametrize("op", ["migrate", "restore"])
def test_a_short_domain_comes_back_with_the_raised_limit_and_nothing_else(env: Env, op: str):
    env.set_policy("<mode>strict</mode>")
    xml = passthrough(GiB)
    r = env.run(op, xml)
    assert r.rc == 0 and r.stderr == ""
    out = etree.fromstring(r.stdout.encode())
    target = r.records[0]["recommended_hard_limit"]
    hard = out.find("memtune/hard_limit")
    assert hard is not None and hard.get("unit") == "KiB"
    assert int(hard.text or 0) * KiB == target > GiB
    assert canonical_without_memtune(r.stdout) == canonical_without_memtune(xml)
    rec = r.records[0]
    assert (rec["action"], rec["hard_limit_from"], rec["hard_limit_to"]) == \
        ("adjust", GiB, target)
    # and the raised XML then passes prepare
    assert env.run("prepare", r.stdout.encode()).rc == 0


def test_adjust_keeps_every_other_memtune_child(env: Env):
    env.set_policy("<mode>strict</mode>")
    xml = domain_xml(hostdevs(1), extra="<memtune><hard_limit unit='G'>1</hard_limit>"
                                        "<soft_limit unit='M'>512</soft_limit>"
                                        "<min_guarantee>1024</min_guarantee></memtune>")
    out = etree.fromstring(env.run("restore", xml).stdout.encode())
    tune = out.find("memtune")
    assert tune is not None
    assert [c.tag for c in tune] == ["hard_limit", "soft_limit", "min_guarantee"]
    assert tune.findtext("soft_limit") == "512" and tune.find("soft_limit").get("unit") == "M"


def test_a_domain_that_fits_is_not_rewritten(env: Env):
    r = env.run("restore", passthrough(64 * GiB))
    assert r.stdout == "" and r.records[0]["action"] == "keep"


@pytest.mark.parametrize(("adjust", "op"), [("<adjust><restore/></adjust>", "migrate"),
                                            ("<adjust><migrate/></adjust>", "restore"),
                                            ("<adjust/>", "restore")])
def test_adjust_names_the_ops_that_may_rewrite(env: Env, adjust: str, op: str):
    env.set_policy(f"<mode>strict</mode>{adjust}")
    r = env.run(op, passthrough(GiB))
    assert r.rc == 0 and r.stdout == ""
    assert r.records[0]["action"] == "keep" and "adjust" in r.records[0]["reason"]


def test_raise_hard_limit_inserts_memtune_where_libvirt_writes_it():
    root = etree.fromstring(b"<domain>\n  <name>a</name>\n  <memory>1</memory>\n"
                            b"  <currentMemory>1</currentMemory>\n  <vcpu>1</vcpu>\n</domain>")
    assert raise_hard_limit(root, 3 * GiB + 1)
    assert [c.tag for c in root] == ["name", "memory", "currentMemory", "memtune", "vcpu"]
    hard = root.find("memtune/hard_limit")
    assert hard is not None and hard.text == str(3 * GiB // KiB + 1)  # rounded up to KiB
    assert b"\n  <memtune>\n    <hard_limit" in etree.tostring(root)


def test_raise_hard_limit_never_lowers():
    root = etree.fromstring(b"<domain><memtune><hard_limit unit='GiB'>8</hard_limit>"
                            b"</memtune></domain>")
    assert not raise_hard_limit(root, 4 * GiB)
    assert raise_hard_limit(root, 9 * GiB)
    assert root.findtext("memtune/hard_limit") == str(9 * GiB // KiB)


def test_raise_hard_limit_raises_swap_hard_limit_with_it():
    """A swap_hard_limit below the new hard_limit goes up by the same amount, keeping
    the operator's swap allowance; one already above it is left alone."""
    root = etree.fromstring(b"<domain><memtune><hard_limit unit='GiB'>1</hard_limit>"
                            b"<swap_hard_limit unit='GiB'>2</swap_hard_limit></memtune>"
                            b"</domain>")
    assert raise_hard_limit(root, 3 * GiB)
    assert root.findtext("memtune/hard_limit") == str(3 * GiB // 1024)
    assert root.findtext("memtune/swap_hard_limit") == str(4 * GiB // 1024)
    assert raise_hard_limit(root, 3 * GiB + 1024)  # swap (4 GiB) is still above: kept
    assert root.findtext("memtune/swap_hard_limit") == str(4 * GiB // 1024)


# -- on-error ------------------------------------------------------------------------------

@pytest.mark.parametrize(("on_error", "rc"), [("allow", 0), ("refuse", 1)])
def test_a_broken_policy_follows_on_error(env: Env, on_error: str, rc: int):
    env.policy.write_text(f'<policy xmlns="{NS}"><on-error>{on_error}</on-error>'
                          f"<audit-log>{env.audit}</audit-log><mode>fastest</mode></policy>")
    r = env.run("prepare", passthrough(GiB))
    assert r.rc == rc
    assert "could not check" in r.stderr and "line 1: <mode>" in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    (rec,) = r.records  # the salvaged audit-log path is still used
    assert rec["verdict"] == "error" and rec["action"] == ("refuse" if rc else "allow")
    assert "fastest" in rec["error"]


def test_an_unparsable_policy_defaults_to_allow(env: Env):
    env.policy.write_text("<policy")
    r = env.run("prepare", passthrough(GiB))
    assert r.rc == 0 and "not well-formed" in r.stderr


def test_a_missing_named_policy_is_an_error_not_the_defaults(env: Env):
    env.policy.unlink()
    r = env.run("prepare", passthrough(GiB))
    assert r.rc == 0 and "does not exist" in r.stderr


@pytest.mark.parametrize("xml", [b"", b"<domain", b"<domain><name>x</name></domain>",
                                 b"\xff\xfe", b"<vm/>"])
def test_bad_domain_xml_follows_on_error(env: Env, xml: bytes):
    env.set_policy("<on-error>refuse</on-error>")
    r = env.run("prepare", xml)
    assert r.rc == 1 and "could not check" in r.stderr and r.stderr.count("\n") == 1


def test_migrate_under_on_error_refuse_aborts_and_prints_no_xml(env: Env):
    env.set_policy("<on-error>refuse</on-error>")
    r = env.run("migrate", b"<domain")
    assert r.rc == 1 and r.stdout == ""


def test_a_corrupt_facts_cache_follows_on_error(env: Env):
    env.facts.write_text("{not json")
    r = env.run("prepare", passthrough())
    assert r.rc == 0 and "host facts cache" in r.stderr


def test_an_internal_error_is_one_line_not_a_traceback(env: Env,
                                                       monkeypatch: pytest.MonkeyPatch):
    import memlock_guard.accounting.report

    def boom(*a: Any, **k: Any) -> Any:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(memlock_guard.accounting.report, "assess", boom)
    env.set_policy("<on-error>refuse</on-error>")
    r = env.run("prepare", passthrough())
    assert r.rc == 1
    assert "internal error: ZeroDivisionError" in r.stderr and "Traceback" not in r.stderr


NO_LXML = textwrap.dedent("""
    import io, sys
    sys.modules["lxml"] = sys.modules["lxml.etree"] = None  # any import of it fails
    from memlock_guard import hook
    sys.exit(hook.run(["vm", "prepare", "begin", "-"], stdin=io.BytesIO(b"<domain/>"),
                      policy_path=sys.argv[1], facts_path=None, use_syslog=False))
""")


def test_a_missing_dependency_still_gets_the_on_error_outcome(env: Env):
    env.policy.write_text(f'<policy xmlns="{NS}"><on-error>refuse</on-error></policy>')
    p = subprocess.run([sys.executable, "-c", NO_LXML, str(env.policy)],
                       capture_output=True, timeout=60)
    assert p.returncode == 1 and b"Traceback" not in p.stderr
    assert b"could not check domain 'vm' (internal error: ModuleNotFoundError" in p.stderr


def test_an_unwritable_audit_log_does_not_change_the_decision(env: Env):
    env.policy.write_text(f'<policy xmlns="{NS}"><mode>strict</mode>'
                          f"<audit-log>/proc/self/no/such/audit.jsonl</audit-log></policy>")
    r = env.run("prepare", passthrough(GiB))
    assert r.rc == 1
    assert "cannot write audit log /proc/self/no/such/audit.jsonl" in r.stderr
    assert "refused the start" in r.stderr


# -- the deadline ---------------------------------------------------------------------------

@pytest.mark.parametrize(("on_error", "rc"), [("allow", 0), ("refuse", 1)])
def test_a_stuck_step_ends_in_the_on_error_outcome(env: Env, monkeypatch: pytest.MonkeyPatch,
                                                   on_error: str, rc: int):
    import time

    import memlock_guard.accounting.report

    def stuck(*a: Any, **k: Any) -> Any:
        time.sleep(30)

    monkeypatch.setattr(memlock_guard.accounting.report, "assess", stuck)
    env.set_policy(f"<on-error>{on_error}</on-error>")
    t0 = time.monotonic()
    r = env.run("prepare", passthrough(), deadline=0.3)
    assert time.monotonic() - t0 < 10  # well before libvirt would notice
    assert r.rc == rc and "deadline" in r.stderr
    assert r.records[0]["verdict"] == "error"
    assert signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None)


WATCHDOG = textwrap.dedent("""
    import io, signal, sys, time
    import memlock_guard.hook.entry as hook
    import memlock_guard.accounting.report
    hook.WATCHDOG_GRACE = 0.2
    def stuck(*a, **k):
        # SIGALRM blocked: the signal's exception can never be raised, as when a step
        # is stuck inside C code; only the watchdog thread can end this.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(60)
    memlock_guard.accounting.report.assess = stuck
    rc = hook.run(["vm", "prepare", "begin", "-"], stdin=io.BytesIO(sys.stdin.buffer.read()),
                  policy_path=sys.argv[1], facts_path=sys.argv[2], deadline=0.3,
                  use_syslog=False)
    print("run() returned", rc)
""")


@pytest.mark.parametrize(("on_error", "rc"), [("allow", 0), ("refuse", 1)])
def test_the_watchdog_ends_a_step_the_alarm_cannot_interrupt(env: Env, on_error: str, rc: int):
    env.set_policy(f"<on-error>{on_error}</on-error>")
    p = subprocess.run([sys.executable, "-c", WATCHDOG, str(env.policy), str(env.facts)],
                       input=passthrough(), capture_output=True, timeout=30)
    assert p.returncode == rc, p.stderr
    assert b"run() returned" not in p.stdout
    assert b"stuck past the hook's 0.3 s deadline" in p.stderr
    assert env.records()[-1]["verdict"] == "error"


# -- the decision cache ---------------------------------------------------------------------

def cached_run(env: Env, op: str, xml: bytes) -> Result:
    return env.run(op, xml, cache_dir=str(env.tmp / "decisions"))


def entries(env: Env) -> int:
    d = env.tmp / "decisions"
    return len(list(d.glob("*.json"))) if d.exists() else 0


@pytest.mark.parametrize("op", ["prepare", "restore"])
def test_a_replayed_decision_is_the_decision(env: Env, op: str):
    env.set_policy("<mode>strict</mode>")
    xml = passthrough(GiB)
    first, second = cached_run(env, op, xml), cached_run(env, op, xml)
    assert (first.rc, first.stdout, first.stderr) == (second.rc, second.stdout, second.stderr)
    assert "cached" not in first.records[0] and second.records[0]["cached"] is True
    skip = {"time", "pid", "cached"}
    assert {k: v for k, v in first.records[0].items() if k not in skip} == \
        {k: v for k, v in second.records[0].items() if k not in skip}
    assert entries(env) == 1


def test_the_domain_id_libvirt_renumbers_does_not_defeat_the_cache(env: Env):
    xml = passthrough()
    cached_run(env, "prepare", xml.replace(b"<domain ", b"<domain id='7' ", 1))
    again = cached_run(env, "prepare", xml.replace(b"<domain ", b"<domain id='8' ", 1))
    assert again.records[0].get("cached") is True


def test_any_change_of_input_is_a_new_decision(env: Env):
    env.set_policy("<mode>strict</mode>")
    xml = passthrough(GiB)
    assert cached_run(env, "prepare", xml).rc == 1
    env.set_policy("<mode>strict</mode><on-shortfall>warn</on-shortfall>")
    assert cached_run(env, "prepare", xml).rc == 0  # policy changed
    assert cached_run(env, "prepare", passthrough(4 * GiB)).records[0].get("cached") is None
    facts = dict(PINNED_HOST, kernel_release="6.8.0")
    env.facts.write_text(json.dumps(facts))
    assert cached_run(env, "prepare", xml).records[0].get("cached") is None
    assert cached_run(env, "migrate", xml).records[0].get("cached") is None
    assert entries(env) == 5


def test_a_rom_file_that_changed_size_is_a_new_decision(env: Env):
    # probe_host: the size of a <rom file> is read from the file itself.
    env.facts.write_text(json.dumps(dict(PINNED_HOST, probe_host=True)))
    rom = env.tmp / "gpu.rom"
    rom.write_bytes(b"\0" * 100_000)
    dev = hostdevs(1).replace("</hostdev>", f"<rom file='{rom}'/></hostdev>")
    xml = domain_xml(dev)
    first = cached_run(env, "prepare", xml)
    assert cached_run(env, "prepare", xml).records[0]["cached"] is True
    rom.write_bytes(b"\0" * 3_000_000)
    third = cached_run(env, "prepare", xml)
    assert third.records[0].get("cached") is None
    assert third.records[0]["required"] > first.records[0]["required"]


def test_failures_and_plugin_policies_are_not_cached(env: Env):
    env.set_policy("<on-error>refuse</on-error>")
    assert cached_run(env, "prepare", b"<domain").rc == 1
    assert cached_run(env, "prepare", b"<domain").rc == 1
    env.set_policy("<plugins/>")
    cached_run(env, "prepare", passthrough())
    cached_run(env, "prepare", passthrough())
    assert entries(env) == 0


def test_the_cache_fingerprints_what_host_reads():
    """The cache key and HostFacts read the same sources (host_sources), not copies."""
    from memlock_guard.host import sources as host_sources

    assert decision_cache.DATA_DIRS is host_sources.DATA_DIRS is host.DEFAULT_DATA_DIRS
    assert decision_cache.ROM_SUFFIXES is host_sources.ROM_SUFFIXES is host._ROM_SUFFIXES
    assert set(decision_cache.MODULES) == {"vfio_iommu_type1", "iommufd"}


# -- the installed script ----------------------------------------------------------------------

def install(tmp: Path, *args: str) -> int:
    return cli.main(["install-hook", "--hooks-dir", str(tmp / "hooks"),
                     "--facts-cache", str(tmp / "facts.json"),
                     "--decision-cache", str(tmp / "decisions"), *args])


def test_install_writes_an_executable_drop_in_with_absolute_paths(tmp_path: Path,
                                                                  capsys: Any):
    policy = tmp_path / "p.xml"
    assert install(tmp_path, "--policy", str(policy)) == 0
    out = capsys.readouterr().out
    assert "restart libvirtd" in out
    script = tmp_path / "hooks" / "qemu.d" / "50-memlock-guard"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert text.startswith(f"#!{sys.executable} -IS\n")
    assert f"POLICY: str | None = {str(policy)!r}" in text
    assert json.loads((tmp_path / "facts.json").read_text()).keys() >= {
        "libvirt_version", "qemu_version", "qemu_data_dirs"}
    assert not (tmp_path / "hooks" / "qemu").exists()


def test_install_never_clobbers_a_foreign_main_script(tmp_path: Path, capsys: Any):
    main = tmp_path / "hooks" / "qemu"
    main.parent.mkdir()
    main.write_text("#!/bin/sh\necho theirs\n")
    assert install(tmp_path, "--as-main-script") == 1
    assert "not replacing" in capsys.readouterr().err
    assert main.read_text() == "#!/bin/sh\necho theirs\n"

    assert install(tmp_path, "--as-main-script", "--force") == 0
    assert "memlock-guard-hook" in main.read_text()
    backup = tmp_path / "hooks" / "qemu.pre-memlock-guard"
    assert backup.read_text() == "#!/bin/sh\necho theirs\n"

    assert cli.main(["uninstall-hook", "--hooks-dir", str(tmp_path / "hooks"),
                     "--facts-cache", str(tmp_path / "facts.json"),
                     "--decision-cache", str(tmp_path / "decisions")]) == 0
    assert main.read_text() == "#!/bin/sh\necho theirs\n" and not backup.exists()


def test_uninstall_removes_only_what_install_wrote(tmp_path: Path):
    assert install(tmp_path) == 0
    d = tmp_path / "hooks" / "qemu.d"
    (d / "10-theirs").write_text("#!/bin/sh\n")
    (tmp_path / "hooks" / "qemu").write_text("#!/bin/sh\n")
    assert cli.main(["uninstall-hook", "--hooks-dir", str(tmp_path / "hooks"),
                     "--facts-cache", str(tmp_path / "facts.json"),
                     "--decision-cache", str(tmp_path / "decisions")]) == 0
    assert sorted(p.name for p in d.iterdir()) == ["10-theirs"]
    assert (tmp_path / "hooks" / "qemu").exists()
    assert not (tmp_path / "facts.json").exists()


def test_reinstalling_as_main_script_removes_our_drop_in(tmp_path: Path):
    assert install(tmp_path) == 0
    assert install(tmp_path, "--as-main-script") == 0
    assert not (tmp_path / "hooks" / "qemu.d" / "50-memlock-guard").exists()
    assert (tmp_path / "hooks" / "qemu").exists()


def test_install_stops_on_a_broken_policy(tmp_path: Path, capsys: Any):
    bad = tmp_path / "p.xml"
    bad.write_text(f'<policy xmlns="{NS}"><mode>x</mode></policy>')
    assert install(tmp_path, "--policy", str(bad)) == 2
    assert "line 1: <mode>" in capsys.readouterr().err


@pytest.fixture
def installed(tmp_path: Path) -> tuple[Path, Env]:
    env = Env(tmp_path)
    assert install(tmp_path, "--policy", str(env.policy)) == 0
    # The pinned host, as the hook's facts cache: decisions do not depend on this machine.
    (tmp_path / "facts.json").write_text(json.dumps(PINNED_HOST))
    return tmp_path / "hooks" / "qemu.d" / "50-memlock-guard", env


def imports_of(script: Path, *args: str, stdin: bytes) -> tuple[int, set[str]]:
    p = subprocess.run([sys.executable, "-X", "importtime", "-IS", str(script), *args],
                       input=stdin, capture_output=True, timeout=60, env={})
    mods = {line.split("|")[-1].strip() for line in p.stderr.decode().splitlines()
            if line.startswith("import time:")}
    return p.returncode, mods


def test_a_non_acting_op_imports_nothing_of_ours(installed: tuple[Path, Env]):
    script, _ = installed
    rc, mods = imports_of(script, "vm", "started", "begin", "-", stdin=passthrough())
    assert rc == 0
    assert not {m for m in mods if m.startswith(("memlock_guard", "lxml", "pluggy"))}, mods


def test_a_replayed_decision_imports_no_engine(installed: tuple[Path, Env]):
    script, env = installed
    env.set_policy("<mode>strict</mode>")
    xml = passthrough(GiB)
    rc, cold = imports_of(script, "vm", "prepare", "begin", "-", stdin=xml)
    assert rc == 1 and "lxml.etree" in cold and "pluggy" in cold
    rc, warm = imports_of(script, "vm", "prepare", "begin", "-", stdin=xml)
    assert rc == 1
    heavy = {m for m in warm if m.startswith((
        "lxml", "pluggy", "memlock_guard.accounting.report", "memlock_guard.accounting.engine",
        "memlock_guard.policy.load"))}
    assert not heavy, heavy
    assert env.records()[-1]["cached"] is True


def test_the_installed_script_refuses_with_the_paragraph(installed: tuple[Path, Env]):
    script, env = installed
    env.set_policy("<mode>strict</mode>")
    p = subprocess.run([str(script), "vm", "prepare", "begin", "-"], input=passthrough(GiB),
                       capture_output=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert p.returncode == 1
    assert p.stderr.decode().startswith("memlock-guard refused the start: domain 'vm'")


def test_without_its_package_the_script_honours_on_error_refuse(tmp_path: Path):
    """A hook whose interpreter lacks memlock_guard must not crash or hang libvirt."""
    script_text = (ROOT / "hooks" / "qemu").read_text()
    policy = tmp_path / "p.xml"
    policy.write_text(f'<policy xmlns="{NS}"><on-error>refuse</on-error></policy>')
    script_text = script_text.replace("POLICY: str | None = None",
                                      f"POLICY: str | None = {str(policy)!r}")
    script = tmp_path / "qemu"
    script.write_text(script_text)
    p = subprocess.run(["/usr/bin/python3", "-IS", str(script), "vm", "prepare", "begin", "-"],
                       input=b"<domain/>", capture_output=True, timeout=60)
    if p.returncode == 0 and b"cannot load" not in p.stderr:
        pytest.skip("the system python has memlock_guard installed")
    assert p.returncode == 1
    assert b"cannot load its package" in p.stderr and b"Traceback" not in p.stderr
    policy.write_text(f'<policy xmlns="{NS}"/>')
    p = subprocess.run(["/usr/bin/python3", "-IS", str(script), "vm", "prepare", "begin", "-"],
                       input=b"<domain/>", capture_output=True, timeout=60)
    assert p.returncode == 0


def test_the_hook_template_is_shipped_inside_the_package():
    import memlock_guard

    packaged = Path(memlock_guard.__file__).parent / "data" / "qemu-hook"
    assert packaged.read_bytes() == (ROOT / "hooks" / "qemu").read_bytes()


def test_audit_lines_are_whole_under_many_writers(tmp_path: Path):
    """Concurrent appends from many processes never interleave (see also the e2e test)."""
    from memlock_guard.support import audit

    log = tmp_path / "a.jsonl"
    code = ("import sys; from memlock_guard.support import audit\n"
            "for i in range(200):\n"
            "    audit.append(sys.argv[1], audit.entry(op='t', domain=sys.argv[2]*400,"
            " uuid=None, action='allow', n=i))\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(log), chr(65 + k)])
             for k in range(8)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    records = audit.read(str(log))
    assert len(records) == 1600
    assert all(r["domain"] == r["domain"][0] * 400 for r in records)


def test_a_huge_error_message_still_gives_one_bounded_line():
    from memlock_guard.support import audit

    line = audit.encode(audit.entry(op="prepare", domain="x", uuid=None, action="allow",
                                    error="e" * 100_000))
    assert len(line) <= audit.MAX_LINE and line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line)["error"].startswith("eee")


def test_an_audit_log_that_is_not_a_regular_file_is_not_written(tmp_path: Path):
    from memlock_guard.support import audit

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    err = io.StringIO()
    assert not audit.log(str(fifo), audit.entry(op="t", domain="x", uuid=None,
                                                action="allow"), use_syslog=False, stderr=err)
    assert "cannot write audit log" in err.getvalue()


def test_syslog_summary_is_one_line():
    from memlock_guard.support import audit

    s = audit.summary(audit.entry(op="prepare", domain="vm", uuid=None, action="refuse",
                                  verdict="short", mode="strict", required=2 * GiB,
                                  limit=GiB, recommended_hard_limit=3 * GiB))
    assert s == (f"prepare vm: refuse verdict=short mode=strict required={2 * GiB} "
                 f"limit={GiB} recommended_hard_limit={3 * GiB}")
    assert MiB  # keep the builders import honest for readers: sizes come from there


def test_the_stderr_paragraph_carries_no_control_characters() -> None:
    from memlock_guard.hook.entry import one_paragraph

    line = one_paragraph("domain 'vm\x1b[31m' needs\n\tmore\x07 memory")
    assert "\x1b" not in line and "\x07" not in line and "\n" not in line
    assert line == "domain 'vm?[31m' needs more? memory"
