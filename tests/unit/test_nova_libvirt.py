"""apply, watch, check and explain on an OpenStack Nova instance, against libvirt's
test:///default driver: Nova's instances are left to Nova unless --force."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("libvirt")

from memlock_guard import cli
from memlock_guard.host.facts import HostFacts

from .test_libvirt_flows import mg
from .test_watch import Running, until, watcher
from .testdriver import Driver, open_test_driver, short_xml

NOVA_METADATA = """\
  <metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
      <nova:package version="30.2.0"/>
      <nova:name>db-01</nova:name>
      <nova:flavor name="m1.nvme">
        <nova:memory>4096</nova:memory>
        <nova:vcpus>2</nova:vcpus>
      </nova:flavor>
    </nova:instance>
  </metadata>
"""


def nova_short_xml(name: str) -> str:
    """The apply tests' short domain, as Nova would have defined it."""
    xml = short_xml(name)
    return xml.replace("  <memory", NOVA_METADATA + "  <memory", 1)


@pytest.fixture
def td(tmp_path: Path) -> Iterator[Driver]:
    d = open_test_driver(tmp_path)
    yield d
    d.cleanup()


def test_apply_skips_a_nova_instance_and_says_why(td: Driver,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    td.define(nova_short_xml("mgt-nova"))
    before = td.xml("mgt-nova")
    assert cli.main(mg(td, "apply", "mgt-nova")) == 0
    out = capsys.readouterr().out
    assert out.startswith("mgt-nova: skipped: OpenStack Nova instance 'db-01' (flavor "
                          "'m1.nvme'), short by ")
    assert "Nova redefines this domain at every start and hard reboot" in out
    assert td.xml("mgt-nova") == before
    assert cli.main(mg(td, "apply", "mgt-nova", "--format", "json")) == 0
    (doc,) = json.loads(capsys.readouterr().out)
    assert doc["action"] == "skip" and "Nova" in doc["reason"] and not doc["written"]


def test_apply_force_raises_it_with_a_warning(td: Driver,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    td.define(nova_short_xml("mgt-nova-force"))
    assert cli.main(mg(td, "apply", "mgt-nova-force", "--force")) == 0
    captured = capsys.readouterr()
    assert "mgt-nova-force: raised hard_limit" in captured.out
    assert ("memlock-guard: warning: mgt-nova-force is an OpenStack Nova instance: the "
            "hard_limit lasts only until Nova's next hard reboot") in captured.err
    xml = td.xml("mgt-nova-force")
    assert "<hard_limit" in xml and "nova:instance" in xml  # Nova's metadata kept


def test_check_and_explain_point_at_the_flavor(td: Driver,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    td.define(nova_short_xml("mgt-nova-check"))
    assert cli.main(mg(td, "check", "mgt-nova-check")) == 1
    out = capsys.readouterr().out
    assert "SHORT: a Nova instance: change its flavor or image" in out
    assert cli.main(mg(td, "explain", "mgt-nova-check", "--format", "json")) == 0
    doc = json.loads(capsys.readouterr().out)["report"]
    assert doc["platform"] == "nova"
    assert doc["remedies"][0]["action"] == "locked-memory"


def test_watch_leaves_a_nova_instance_alone_unless_forced(
        td: Driver, pinned_host: HostFacts, caplog: pytest.LogCaptureFixture) -> None:
    td.define(short_xml("mgt-plain"))
    td.define(nova_short_xml("mgt-nova-w"))
    caplog.set_level(logging.INFO, logger="memlock_guard.libvirtd.watch")
    with Running(watcher(td, pinned_host, resync_interval=0)):
        until("the plain domain is raised", lambda: "<hard_limit" in td.xml("mgt-plain"))
        until("the Nova skip is logged",
              lambda: any("mgt-nova-w: OpenStack Nova instance" in r.getMessage()
                          for r in caplog.records))
    assert "<hard_limit" not in td.xml("mgt-nova-w")
    with Running(watcher(td, pinned_host, resync_interval=0, force=True)):
        until("the forced Nova domain is raised", lambda: "<hard_limit" in td.xml("mgt-nova-w"))
    assert any("is an OpenStack Nova instance (--force)" in r.getMessage()
               for r in caplog.records)
