"""The policy: file format, defaults, per-domain override, errors with line and element."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from lxml import etree
from memlock_guard.accounting.modes import Mode
from memlock_guard.accounting.report import Settings
from memlock_guard.domain import parse_domain
from memlock_guard.policy import grammar as policy_grammar
from memlock_guard.policy import load as pol
from memlock_guard.policy import model as policy_model
from memlock_guard.support import defaults
from memlock_guard.support.errors import InputError

from .builders import GiB, KiB, MiB, domain_xml

NS = defaults.POLICY_NS


def doc(body: str, *, ns: str = NS) -> bytes:
    return f'<policy xmlns="{ns}">{body}</policy>'.encode()


FULL = doc("""
  <mode>strict</mode>
  <on-shortfall>warn</on-shortfall>
  <adjust><restore/></adjust>
  <margin unit="MiB">32</margin>
  <zero-page-allowance unit="KiB">512</zero-page-allowance>
  <on-error>refuse</on-error>
  <plugins><allow>acme-gpu</allow><allow>acme.nic</allow></plugins>
  <audit-log>/srv/log/mg.jsonl</audit-log>
""")


def test_defaults_are_the_documented_ones():
    d = policy_model.DEFAULTS
    assert d.mode is Mode.AUTO
    assert d.on_shortfall is policy_model.OnShortfall.REFUSE
    assert d.adjust == {"migrate", "restore"}
    assert d.margin == 64 * MiB
    assert d.zero_page_allowance == 0
    assert d.on_error is policy_model.OnError.ALLOW
    assert d.plugins == ()
    assert d.audit_log == "/var/log/memlock-guard/audit.jsonl"


def test_a_missing_default_file_means_the_defaults(tmp_path: Path):
    assert pol.load(str(tmp_path / "absent.xml"), named=False) == policy_model.DEFAULTS


def test_a_missing_named_file_is_an_error(tmp_path: Path):
    with pytest.raises(InputError, match="does not exist"):
        pol.load(str(tmp_path / "absent.xml"))


def test_path_precedence_flag_then_environment_then_default():
    env = {defaults.POLICY_ENV_VAR: "/b.xml"}
    assert policy_model.policy_path("/a.xml", env) == ("/a.xml", True)
    assert policy_model.policy_path(None, env) == ("/b.xml", True)
    assert policy_model.policy_path(None, {}) == (defaults.POLICY_PATH, False)


def test_every_setting_is_read(tmp_path: Path):
    f = tmp_path / "policy.xml"
    f.write_bytes(FULL)
    p = pol.load(str(f))
    assert p.mode is Mode.STRICT
    assert p.on_shortfall is policy_model.OnShortfall.WARN
    assert p.adjust == {"restore"}
    assert p.may_adjust("restore") and not p.may_adjust("migrate")
    assert p.margin == 32 * MiB
    assert p.zero_page_allowance == 512 * KiB
    assert p.on_error is policy_model.OnError.REFUSE
    assert p.plugins == ("acme-gpu", "acme.nic")
    assert p.audit_log == "/srv/log/mg.jsonl"
    assert p.origin == str(f)


def test_an_empty_document_is_the_defaults():
    assert pol.parse(doc(""), origin="x") == policy_model.DEFAULTS.__class__(origin="x")


@pytest.mark.parametrize(("text", "unit", "expected"), [
    ("64", "MiB", 64 * MiB), ("1", "G", GiB), ("1000", "KB", 977 * KiB),  # rounded up
    ("2048", None, 2 * MiB), ("4096", "bytes", 4 * KiB), ("1", "b", KiB),
])
def test_sizes_are_libvirt_scaled_integers(text: str, unit: str | None, expected: int):
    attr = f' unit="{unit}"' if unit else ""
    assert pol.parse(doc(f"<margin{attr}>{text}</margin>")).margin == expected


def test_zero_page_allowance_unlimited_forgives_everything():
    p = pol.parse(doc("<zero-page-allowance>unlimited</zero-page-allowance>"))
    assert p.zero_page_allowance is None
    assert policy_model.to_settings(p).zero_page_allowance is None


def test_an_empty_adjust_adjusts_nothing():
    p = pol.parse(doc("<adjust/>"))
    assert not p.may_adjust("migrate") and not p.may_adjust("restore")


def test_to_settings_carries_the_accounting_numbers():
    p = pol.parse(FULL)
    assert policy_model.to_settings(p, libvirt_version=(9, 0, 0)) == Settings(
        mode=Mode.STRICT, margin=32 * MiB, zero_page_allowance=512 * KiB,
        libvirt_version=(9, 0, 0))


@pytest.mark.parametrize(("body", "line", "element", "words"), [
    ("\n<mode>strictt</mode>", 2, "mode", "expected one of strict, tolerant, auto"),
    ("\n<mode>strict</mode>\n<mode>auto</mode>", 3, "mode", "more than once"),
    ("\n\n<frobnicate/>", 3, "frobnicate", "not a policy setting"),
    ("\n<margin unit='parsecs'>1</margin>", 2, "margin", "unknown unit"),
    ("\n<margin>-5</margin>", 2, "margin", "whole number"),
    ("\n<margin>lots</margin>", 2, "margin", "whole number"),
    ("\n<on-shortfall><refuse/></on-shortfall>", 2, "on-shortfall", "not child elements"),
    ("\n<adjust><start/></adjust>", 2, "start", "<migrate/> or <restore/>"),
    ("\n<adjust><migrate/><migrate/></adjust>", 2, "migrate", "more than once"),
    ("\n<plugins><deny>x</deny></plugins>", 2, "deny", "expected <allow>"),
    ("\n<audit-log>relative.jsonl</audit-log>", 2, "audit-log", "absolute path"),
    ("\n<zero-page-allowance>some</zero-page-allowance>", 2, "zero-page-allowance",
     "whole number"),
    ('\n<x:mode xmlns:x="urn:other">strict</x:mode>', 2, "mode", "not in namespace"),
])
def test_errors_name_the_line_and_the_element(body: str, line: int, element: str,
                                              words: str):
    with pytest.raises(InputError) as e:
        pol.parse(doc(body), what="policy /etc/mg.xml")
    msg = str(e.value)
    assert msg.startswith(f"policy /etc/mg.xml line {line}: <{element}>"), msg
    assert words in msg
    assert "\n" not in msg


def test_a_root_outside_the_namespace_is_named():
    with pytest.raises(InputError, match=r"line 1: root element is <policy>, expected"):
        pol.parse(b"<policy><mode>strict</mode></policy>")


def test_not_well_formed_xml_names_the_line():
    with pytest.raises(InputError, match=r"not well-formed.*line 2"):
        pol.parse(doc("\n<mode>strict</mode").replace(b"</policy>", b""))


def test_entities_are_refused():
    evil = (b'<!DOCTYPE p [<!ENTITY x SYSTEM "file:///etc/shadow">]>'
            + doc("<audit-log>&x;</audit-log>"))
    with pytest.raises(InputError, match="DOCTYPE"):
        pol.parse(evil)


VALID = [FULL, doc(""), doc("<adjust/>"), doc("<zero-page-allowance>unlimited"
                                               "</zero-page-allowance>"),
         doc("<margin unit='GiB'> 1 </margin><mode> tolerant </mode>"),
         doc("<plugins/>"),
         doc("<kubevirt-version>v1.8.3</kubevirt-version>"
             "<kubevirt-overhead-ratio>1.5</kubevirt-overhead-ratio>"),
         doc("<kubevirt-version>main</kubevirt-version>"),
         doc("<hotplug-reserve><vfio-devices>2</vfio-devices></hotplug-reserve>"),
         doc("<hotplug-reserve><vfio-devices> 256 </vfio-devices></hotplug-reserve>"),
         doc("<hotplug-reserve/>")]
INVALID = [doc("<mode>x</mode>"), doc("<mode/><mode/>"), doc("<foo/>"),
           doc("<margin unit='q'>1</margin>"), doc("<adjust><x/></adjust>"),
           doc("<on-error>maybe</on-error>"), doc("<audit-log>x</audit-log>"),
           doc("<kubevirt-version>latest</kubevirt-version>"),
           doc("<kubevirt-overhead-ratio>1,5</kubevirt-overhead-ratio>"),
           doc("<hotplug-reserve><vfio-devices>257</vfio-devices></hotplug-reserve>"),
           doc("<hotplug-reserve><vfio-devices>-1</vfio-devices></hotplug-reserve>"),
           doc("<hotplug-reserve><vfio-devices>two</vfio-devices></hotplug-reserve>"),
           doc("<hotplug-reserve><vfio-devices/></hotplug-reserve>"),
           doc("<hotplug-reserve><memory>1</memory></hotplug-reserve>"),
           doc("<hotplug-reserve><vfio-devices>1</vfio-devices>"
               "<vfio-devices>1</vfio-devices></hotplug-reserve>"),
           doc("<hotplug-reserve/><hotplug-reserve/>")]


def test_hotplug_reserve_in_the_host_file_and_per_domain():
    p = pol.parse(doc("<hotplug-reserve><vfio-devices>2</vfio-devices></hotplug-reserve>"))
    assert p.reserve_vfio_devices == 2
    assert policy_model.to_settings(p).reserve_vfio_devices == 2
    assert policy_model.DEFAULTS.reserve_vfio_devices == 0
    # A domain may ask for its own reserve (it only ever raises what apply writes).
    over = pol.override(p, b'<mg:policy xmlns:mg="urn:memlock-guard:policy:1">'
                           b"<hotplug-reserve><vfio-devices>3</vfio-devices>"
                           b"</hotplug-reserve></mg:policy>", domain_name="vm")
    assert over.reserve_vfio_devices == 3 and over.overridden == ("hotplug-reserve",)
    with pytest.raises(InputError, match=r"<vfio-devices> is '999'; expected a whole number "
                                         r"from 0 to 256"):
        pol.parse(doc("<hotplug-reserve><vfio-devices>999</vfio-devices>"
                      "</hotplug-reserve>"))


@pytest.mark.parametrize("data", VALID + INVALID)
def test_the_relaxng_schema_and_the_checks_agree(data: bytes):
    """schemas/policy.rng is the published contract: it must accept exactly what
    policy.parse accepts (messages come from the Python checks)."""
    schema = etree.RelaxNG(etree.parse(policy_grammar.schema_path()))
    try:
        pol.parse(data)
        accepted = True
    except InputError:
        accepted = False
    assert schema.validate(etree.fromstring(data)) is accepted
    assert accepted is (data in VALID)


def test_kubevirt_settings_are_read_normalised_and_reach_the_settings():
    p = pol.parse(doc("<kubevirt-version> v1.8 </kubevirt-version>"
                      "<kubevirt-overhead-ratio>2.25</kubevirt-overhead-ratio>"))
    assert (p.kubevirt_version, p.kubevirt_overhead_ratio) == ("1.8.0", "2.25")
    s = policy_model.to_settings(p)
    assert (s.kubevirt_version, s.kubevirt_overhead_ratio) == ("1.8.0", "2.25")
    assert policy_model.to_settings(policy_model.DEFAULTS).kubevirt_version == \
        Settings().kubevirt_version


@pytest.mark.parametrize(("body", "words"), [
    ("<kubevirt-version>1.10</kubevirt-version>", "say main"),
    ("<kubevirt-version>0.59</kubevirt-version>", "1.0.0 ... 1.9.x"),
    ("<kubevirt-overhead-ratio>0.5</kubevirt-overhead-ratio>", "at least 1.0")])
def test_kubevirt_values_the_grammar_allows_but_kubevirt_does_not_are_refused(
        body: str, words: str):
    with pytest.raises(InputError, match=r"line 1: <kubevirt-") as e:
        pol.parse(doc(body))
    assert words in str(e.value)


def test_the_schema_is_shipped_inside_the_package():
    from memlock_guard.support.defaults import PACKAGE_DIR

    packaged = Path(PACKAGE_DIR) / "data" / "policy.rng"
    assert packaged.is_file()
    assert packaged.read_bytes() == (Path(__file__).parents[2] / "schemas" /
                                     "policy.rng").read_bytes()


# -- what is read from disk ---------------------------------------------------------------

def test_a_fifo_is_refused_at_once_not_waited_on(tmp_path: Path):
    fifo = tmp_path / "policy.xml"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    with pytest.raises(InputError, match="not a regular file"):
        pol.load(str(fifo))
    assert time.monotonic() - t0 < 5  # generous: the point is it does not block


def test_a_symlink_to_a_device_is_refused(tmp_path: Path):
    link = tmp_path / "policy.xml"
    link.symlink_to("/dev/zero")
    with pytest.raises(InputError, match="not a regular file"):
        pol.load(str(link))


def test_a_directory_is_refused(tmp_path: Path):
    with pytest.raises(InputError, match="policy"):
        pol.load(str(tmp_path))


def test_an_oversized_file_is_refused_without_echoing_it(tmp_path: Path):
    f = tmp_path / "policy.xml"
    f.write_bytes(doc("<!--" + "secret " * 60000 + "-->"))
    with pytest.raises(InputError) as e:
        pol.load(str(f))
    assert "larger than" in str(e.value) and "secret" not in str(e.value)


def test_an_unreadable_file_is_an_error(tmp_path: Path):
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    f = tmp_path / "policy.xml"
    f.write_bytes(FULL)
    f.chmod(0)
    with pytest.raises(InputError, match="cannot read"):
        pol.load(str(f))


# -- fail-safe settings survive a broken file ---------------------------------------------

def test_a_broken_file_still_says_how_to_fail(tmp_path: Path):
    f = tmp_path / "policy.xml"
    f.write_bytes(doc("<on-error>refuse</on-error><audit-log>/srv/a.jsonl</audit-log>"
                      "<mode>bogus</mode>"))
    with pytest.raises(policy_model.PolicyError) as e:
        pol.load(str(f))
    assert e.value.on_error is policy_model.OnError.REFUSE
    assert e.value.audit_log == "/srv/a.jsonl"


def test_salvage_reads_even_a_document_that_is_not_xml():
    got = defaults.salvage(b"<policy><on-error> refuse </on-error")
    assert got == (policy_model.OnError.REFUSE, None)


def test_salvage_gives_up_on_contradictions():
    data = b"<on-error>refuse</on-error><on-error>allow</on-error>"
    assert defaults.salvage(data) == (None, None)


# -- the per-domain override ----------------------------------------------------------------

def with_metadata(inner: str) -> bytes:
    return domain_xml(extra=f"<metadata>{inner}</metadata>", name="vm1")


def test_metadata_overrides_the_domain_settings():
    d = parse_domain(with_metadata(
        f'<mg:policy xmlns:mg="{NS}"><mg:on-shortfall>warn</mg:on-shortfall>'
        f'<mg:margin unit="GiB">1</mg:margin></mg:policy>'))
    base = pol.parse(FULL, origin="/etc/memlock-guard/policy.xml")
    p = pol.for_domain(base, d)
    assert p.on_shortfall is policy_model.OnShortfall.WARN
    assert p.margin == GiB
    assert p.mode is Mode.STRICT  # not overridden: the host's
    assert p.overridden == ("on-shortfall", "margin")
    assert p.origin == "/etc/memlock-guard/policy.xml + vm1's <metadata>"


def test_children_without_a_namespace_count_as_ours():
    """virsh metadata --set '<policy><mode>..' may leave the children un-namespaced."""
    d = parse_domain(with_metadata(f'<mg:policy xmlns:mg="{NS}"><mode>tolerant</mode>'
                                   f'</mg:policy>'))
    assert pol.for_domain(policy_model.DEFAULTS, d).mode is Mode.TOLERANT


@pytest.mark.parametrize("element", ["<on-error>allow</on-error>",
                                     "<plugins><allow>x</allow></plugins>",
                                     "<audit-log>/dev/null</audit-log>",
                                     "<kubevirt-version>1.9</kubevirt-version>",
                                     "<kubevirt-overhead-ratio>2</kubevirt-overhead-ratio>"])
def test_host_only_settings_cannot_be_set_per_domain(element: str):
    d = parse_domain(with_metadata(f'<policy xmlns="{NS}">{element}</policy>'))
    with pytest.raises(InputError, match="only be set in the host policy file"):
        pol.for_domain(policy_model.DEFAULTS, d)


def test_a_domain_without_our_metadata_keeps_the_host_policy():
    d = parse_domain(with_metadata('<other xmlns="urn:x"><mode>warn</mode></other>'))
    assert pol.for_domain(policy_model.DEFAULTS, d) is policy_model.DEFAULTS


def test_a_broken_override_names_the_domain_and_element():
    d = parse_domain(with_metadata(f'<mg:policy xmlns:mg="{NS}"><mg:mode>fast</mg:mode>'
                                   f'</mg:policy>'))
    with pytest.raises(InputError, match=r"vm1's <metadata> policy line 1: <mode> is 'fast'"):
        pol.for_domain(policy_model.DEFAULTS, d)
