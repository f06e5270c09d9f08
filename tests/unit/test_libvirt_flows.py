"""explain / check / apply and the reconcile round trip against libvirt's test:///default."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("libvirt")

from memlock_guard import cli
from memlock_guard.host.facts import HostFacts
from memlock_guard.libvirtd import client as lc
from memlock_guard.libvirtd.reconcile import MAX_ATTEMPTS, Judge, reconcile
from memlock_guard.policy import load as policymod
from memlock_guard.support import audit
from memlock_guard.support.errors import MemlockGuardError

from ..conftest import ROOT
from .testdriver import FITTING_DOMAIN, URI, Driver, open_test_driver, short_xml


@pytest.fixture
def td(tmp_path: Path) -> Iterator[Driver]:
    d = open_test_driver(tmp_path)
    yield d
    d.cleanup()


def judge_for(td: Driver, host: HostFacts) -> Judge:
    pol = policymod.load(str(td.policy))
    return Judge(policy=pol, host=host, probe_files=False)


def mg(td: Driver, *args: str) -> list[str]:
    return [*args, "--connect", URI, "--host-facts", str(td.host_facts),
            "--policy", str(td.policy)]


def hard_limit_kib(xml: str) -> int | None:
    from lxml import etree

    el = etree.fromstring(xml.encode()).find("memtune/hard_limit")
    return None if el is None else int(el.text or "")


# -- reconcile: the libvirt round trip ---------------------------------------------------

def test_reconcile_raises_then_keeps(td: Driver, pinned_host: HostFacts) -> None:
    dom = td.define(short_xml("mgt-raise"))
    judge = judge_for(td, pinned_host)
    out = reconcile(td.conn, dom, judge)
    assert out.written and out.attempts == 1 and out.action == "raise"
    assert out.result is not None and out.report is not None
    xml = td.xml("mgt-raise")
    assert hard_limit_kib(xml) == out.report.verdict.recommended_hard_limit // 1024
    assert "urn:memlock-guard:applied:1" in xml
    assert "passwd='s3cret'" in xml  # secrets survive the redefinition
    # What libvirt stored is what we showed in the diff, line for line.
    assert xml == out.result.new_xml
    again = reconcile(td.conn, dom, judge)
    assert not again.written and again.action == "keep"


def test_dry_run_changes_nothing(td: Driver, pinned_host: HostFacts) -> None:
    dom = td.define(short_xml("mgt-dry"))
    before = td.xml("mgt-dry")
    out = reconcile(td.conn, dom, judge_for(td, pinned_host), dry_run=True)
    assert out.action == "raise" and not out.written
    assert td.xml("mgt-dry") == before


def test_an_edit_racing_apply_survives(td: Driver, pinned_host: HostFacts) -> None:
    dom = td.define(short_xml("mgt-race"))

    def someone_edits(attempt: int) -> None:
        if attempt == 1:  # between our judgement and our re-read, as `virsh edit` would
            td.edit("mgt-race", "<description>original</description>",
                    "<description>edited while apply ran</description>")

    out = reconcile(td.conn, dom, judge_for(td, pinned_host), before_commit=someone_edits)
    assert out.written and out.attempts == 2
    xml = td.xml("mgt-race")
    assert "<description>edited while apply ran</description>" in xml
    assert hard_limit_kib(xml) is not None


def test_a_definition_that_never_settles_is_left_alone(td: Driver,
                                                        pinned_host: HostFacts) -> None:
    dom = td.define(short_xml("mgt-churn"))

    def churn(attempt: int) -> None:
        td.edit("mgt-churn", "<description>", f"<description>edit {attempt} ")

    with pytest.raises(MemlockGuardError, match="changed 5 times"):
        reconcile(td.conn, dom, judge_for(td, pinned_host), before_commit=churn)
    xml = td.xml("mgt-churn")
    assert xml.count("<description>edit ") == 1 and f"edit {MAX_ATTEMPTS} edit 4" in xml
    assert hard_limit_kib(xml) is None


def test_transient_domains_are_skipped(td: Driver, pinned_host: HostFacts) -> None:
    dom = td.conn.createXML(short_xml("mgt-transient"))
    td.defined.append("mgt-transient")
    out = reconcile(td.conn, dom, judge_for(td, pinned_host))
    assert out.action == "skip" and out.skipped and "transient" in out.skipped


def test_policy_metadata_override_is_honoured(td: Driver, pinned_host: HostFacts) -> None:
    xml = short_xml("mgt-override").replace(
        "<memory", "<metadata><mg:policy xmlns:mg='urn:memlock-guard:policy:1'>"
                   "<mg:mode>tolerant</mg:mode><mg:margin unit='MiB'>512</mg:margin>"
                   "</mg:policy></metadata><memory", 1)
    dom = td.define(xml)
    out = reconcile(td.conn, dom, judge_for(td, pinned_host))
    assert out.report is not None and out.report.settings.margin == 512 * 1024 * 1024
    assert out.report.verdict.mode.value == "tolerant"
    stored = td.xml("mgt-override")
    assert "<mg:policy" in stored and "<mga:applied" in stored and 'mode="tolerant"' in stored


# -- the verbs -----------------------------------------------------------------------------

def test_check_apply_check(td: Driver, capsys: pytest.CaptureFixture[str]) -> None:
    td.define(short_xml("mgt-cli"))
    td.define(FITTING_DOMAIN.format(name="mgt-cli-fits"))

    assert cli.main(mg(td, "check", "mgt-cli", "mgt-cli-fits")) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["DOMAIN", "MODE", "REQUIRED", "LIMIT", "HEADROOM", "VERDICT"]
    assert out[1].startswith("mgt-cli ") and "SHORT: set hard_limit >=" in out[1]
    assert out[2].startswith("mgt-cli-fits ") and out[2].endswith("fits")

    assert cli.main(mg(td, "check", "mgt-cli", "--format", "json")) == 1
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["verdict"] == "short" and rows[0]["limit_source"] == "libvirt-formula"

    assert cli.main(mg(td, "apply", "mgt-cli", "--dry-run")) == 0
    dry = capsys.readouterr().out
    assert dry.startswith("mgt-cli: would raise hard_limit to ")
    assert "+++ mgt-cli (after apply)" in dry
    assert hard_limit_kib(td.xml("mgt-cli")) is None

    assert cli.main(mg(td, "apply", "mgt-cli", "mgt-cli-fits")) == 0
    done = capsys.readouterr().out
    assert "mgt-cli: raised hard_limit to " in done
    assert "mgt-cli-fits: unchanged: fits" in done
    assert hard_limit_kib(td.xml("mgt-cli")) is not None
    records = audit.read(str(td.audit_log))
    assert [(r["op"], r["action"], r["domain"]) for r in records] == [
        ("apply", "apply", "mgt-cli")]
    assert records[0]["hard_limit_to"] == hard_limit_kib(td.xml("mgt-cli")) * 1024  # type: ignore[operator]

    assert cli.main(mg(td, "apply", "mgt-cli")) == 0
    assert capsys.readouterr().out.startswith("mgt-cli: unchanged: fits")
    assert cli.main(mg(td, "check", "mgt-cli", "-q")) == 0
    assert capsys.readouterr().out == ""


def test_apply_all_json(td: Driver, capsys: pytest.CaptureFixture[str]) -> None:
    td.define(short_xml("mgt-all"))
    assert cli.main(mg(td, "apply", "--all", "--dry-run", "--format", "json")) == 0
    docs = {d["domain"]: d for d in json.loads(capsys.readouterr().out)}
    assert docs["mgt-all"]["action"] == "raise" and docs["mgt-all"]["written"] is False
    assert docs["mgt-all"]["diff"].startswith("--- mgt-all (persistent definition)")
    assert docs["test"]["action"] == "keep"  # the driver's own sample domain


def test_explain(td: Driver, capsys: pytest.CaptureFixture[str]) -> None:
    td.define(short_xml("mgt-explain"))
    assert cli.main(mg(td, "explain", "mgt-explain")) == 0
    text = capsys.readouterr().out
    assert "side by side:" in text
    assert "libvirt 9.0.0, no hard_limit (libvirt-formula)" in text
    assert "(newest rules)" in text and "KubeVirt 1.9" in text
    # In a virt-launcher pod the pod's libvirt asks for 2 x 4 GiB + 1 GiB (NVMe counts
    # since 9.3), above virt-handler's memory + overhead.
    assert "SHORT by 3.72 GiB (QEMU cannot start: libvirt in the pod asks for 9 GiB)" in text
    assert "verdict: SHORT by" in text

    cli.main(mg(td, "apply", "mgt-explain"))
    capsys.readouterr()
    assert cli.main(mg(td, "explain", "mgt-explain", "--format", "json")) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["definition"] == "persistent"
    assert doc["report"]["verdict"] == "fits"
    assert doc["applied"]["in_place"] is True and doc["applied"]["ledger_changed"] is False
    rules = [r["rule"] for r in doc["side_by_side"]]
    assert rules[0] == "this definition" and rules[-1] == "recommended hard_limit"
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "schemas" / "estimate.schema.json").read_text())
    jsonschema.validate(doc["report"], schema)


def test_explain_live_needs_a_running_domain(td: Driver,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    td.define(short_xml("mgt-live"))
    assert cli.main(mg(td, "explain", "mgt-live", "--live")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["memlock-guard: domain 'mgt-live' is not running; drop --live to explain "
                   "its persistent definition"]
    td.conn.lookupByName("mgt-live").create()
    assert cli.main(mg(td, "explain", "mgt-live", "--live")) == 0


@pytest.mark.parametrize("args, message", [
    (("check", "nope"), "memlock-guard: domain 'nope' is not defined on test:///default"),
    (("apply", "nope"), "memlock-guard: domain 'nope' is not defined on test:///default"),
    (("explain", "nope"), "memlock-guard: domain 'nope' is not defined on test:///default"),
    (("check",), "memlock-guard: name at least one DOMAIN, or use --all"),
    (("apply", "--all", "x"), "memlock-guard: give DOMAIN names or --all, not both"),
    (("apply", "--all", "--platform", "kubevirt"), "memlock-guard: apply writes <memtune>"),
])
def test_one_line_errors_exit_2(td: Driver, capsys: pytest.CaptureFixture[str],
                                args: tuple[str, ...], message: str) -> None:
    assert cli.main(mg(td, *args)) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines
    assert "Traceback" not in captured.err


def test_unreachable_libvirt_is_one_line(capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    uri = f"qemu+unix:///system?socket={tmp_path}/no-such-sock"
    assert cli.main(["check", "--all", "--connect", uri]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"memlock-guard: cannot reach libvirt at {uri}: ")
    assert "Failed to connect socket" in err[0]


def test_connect_retries_with_backoff_then_gives_up(tmp_path: Path) -> None:
    attempts: list[int] = []
    backoff = lc.Backoff(initial=0.01, maximum=0.05, jitter=0.01, give_up_after=0.3)
    with pytest.raises(lc.LibvirtUnreachable):
        lc.connect(f"qemu+unix:///system?socket={tmp_path}/none", backoff=backoff,
                   on_retry=lambda n, _why: attempts.append(n))
    assert len(attempts) >= 2 and attempts == sorted(attempts)


def test_non_transient_errors_are_not_retried() -> None:
    attempts: list[int] = []
    with pytest.raises(lc.LibvirtFailure, match="cannot open"):
        lc.connect("nosuchdriver:///x", on_retry=lambda n, _why: attempts.append(n))
    assert attempts == []


@pytest.mark.parametrize("verb", ["apply", "watch"])
def test_verbs_that_write_memtune_refuse_kubevirt(verb: str, capsys: pytest.CaptureFixture[str]
                                                  ) -> None:
    from memlock_guard.cli import main

    argv = [verb, "vm1"] if verb == "apply" else [verb]
    assert main([*argv, "--platform", "kubevirt"]) == 2
    assert capsys.readouterr().err == (
        f"memlock-guard: {verb} writes <memtune>, which KubeVirt's session-mode libvirt "
        "refuses; use --platform libvirt\n")
