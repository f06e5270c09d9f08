"""The KubeVirt hook sidecar: ``onDefineDomain --vmi <VMI JSON> --domain <domain XML>``.

KubeVirt's sidecar shim (cmd/sidecars/sidecar_shim.go runOnDefineDomain) runs exactly
that, both arguments inline strings, and takes stdout as the domain XML that
virt-launcher defines; a non-zero exit fails the sync (a ``SyncFailed`` event, then a
retry); stderr goes to the sidecar container's log (KubeVirt >= 1.3), one line per line.
The call has a 1-minute deadline (pkg/hooks/manager.go) and, for dedicated-CPU VMIs, the
sidecar container 64M of memory.

What it does:
- judges the domain as virt-launcher built it (plus what earlier sidecars added, such as
  an ``<iommu>``) against KubeVirt's rule for the configured version, with the VMI's
  own memory request, guest memory and devices (accounting/report.py ``_in_pod``);
- fits: prints the XML, byte for byte, with one ``<mgk:verdict>`` in ``<metadata>``;
- short, on-shortfall refuse: exit 1, one paragraph naming the VMI with KubeVirt
  remedies and their numbers (accounting/remedy.py); on-shortfall warn: prints the XML
  and the paragraph;
- bad arguments, VMI JSON or domain XML: one line, exit 2;
- cannot decide otherwise (broken policy or settings, an internal error, its own 30 s
  deadline): the policy's on-error: allow prints the XML unchanged (and says why),
  refuse exits 1.

The KubeVirt version and overhead ratio come from $MEMLOCK_GUARD_KUBEVIRT_VERSION /
$MEMLOCK_GUARD_KUBEVIRT_OVERHEAD_RATIO, else the policy's ``<kubevirt-version>`` /
``<kubevirt-overhead-ratio>``, else (the version) the VMI's launcher image tag
(status.launcherContainerImageVersion), else the defaults, with a warning line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, NamedTuple

from ..support.defaults import (
    KUBEVIRT_RATIO_ENV,
    KUBEVIRT_VERSION_ENV,
    MAX_XML_BYTES,
    POLICY_ENV_VAR,
    POLICY_PATH,
)
from ..support.errors import InputError

if TYPE_CHECKING:
    from ..accounting.report import Report
    from ..policy.model import Policy

EXIT_OK, EXIT_REFUSE, EXIT_BAD_INPUT = 0, 1, 2
DEADLINE_SECONDS = 30  # half of the shim's gRPC deadline (1 minute)
USAGE = "usage: onDefineDomain --vmi <VMI JSON> --domain <domain XML>"
HELP = f"""{USAGE}

memlock-guard's KubeVirt hook sidecar. KubeVirt's sidecar shim runs it before every
domain definition in a virt-launcher pod. It prints the domain XML (with memlock-guard's
verdict in <metadata>) when QEMU's locked-memory limit in the pod fits what VFIO will pin,
and exits 1 with one paragraph and KubeVirt remedies when it does not (on-shortfall
refuse), which fails the VMI's sync.

environment:
  {KUBEVIRT_VERSION_ENV:<38} the cluster's KubeVirt, e.g. 1.8.3 or main
  {KUBEVIRT_RATIO_ENV:<38} its CR's additionalGuestMemoryOverheadRatio ("" = unset)
  {POLICY_ENV_VAR:<38} policy file (default {POLICY_PATH})

By hand, with a VMI and the domain XML virt-launcher built:
  onDefineDomain --vmi "$(kubectl get vmi NAME -o json)" --domain "$(cat domain.xml)"

exit status: 0 passed through, 1 refused (or on-error refuse), 2 bad arguments or input.
See README.md, "KubeVirt"."""


class Answer(NamedTuple):
    code: int
    stdout: bytes
    stderr: tuple[str, ...]  # lines


class Deadline(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    answer = run(args, os.environ)
    return emit(answer, sys.stdout.buffer, sys.stderr)


def emit(answer: Answer, stdout: IO[bytes], stderr: IO[str]) -> int:
    try:
        if answer.stdout:
            stdout.write(answer.stdout)
            stdout.flush()
        for line in answer.stderr:
            stderr.write(f"memlock-guard: {one_line(line)}\n")
        stderr.flush()
    except (OSError, ValueError):
        pass  # the shim went away; the exit status is all that is left
    return answer.code


def one_line(text: str) -> str:
    """One log line: names come from the VMI and the XML, so control characters are
    replaced, not written to the log."""
    return "".join(c if c.isprintable() else "?" for c in " ".join(text.split()))


def parse_args(argv: list[str]) -> tuple[bytes, bytes]:
    """(VMI JSON, domain XML) as bytes, exactly as the shim passed them."""
    got: dict[str, str] = {}
    i = 0
    while i < len(argv):
        flag = argv[i]
        if flag not in ("--vmi", "--domain"):
            raise InputError(f"unexpected argument {flag[:40]!r}; {USAGE}")
        if flag in got:
            raise InputError(f"{flag} given twice; {USAGE}")
        if i + 1 >= len(argv):
            raise InputError(f"{flag} needs a value; {USAGE}")
        got[flag] = argv[i + 1]
        i += 2
    if set(got) != {"--vmi", "--domain"}:
        raise InputError(USAGE)
    # argv arrives decoded with surrogateescape: this gives back the shim's bytes.
    return (got["--vmi"].encode("utf-8", "surrogateescape"),
            got["--domain"].encode("utf-8", "surrogateescape"))


def run(argv: list[str], environ: Mapping[str, str]) -> Answer:
    """One invocation; never raises."""
    if argv in (["-h"], ["--help"]):
        return Answer(EXIT_OK, (HELP + "\n").encode(), ())
    try:
        vmi_json, domain_xml = parse_args(argv)
    except InputError as e:
        return Answer(EXIT_BAD_INPUT, b"", (str(e),))
    on_error = ["allow"]
    try:
        with _deadline(DEADLINE_SECONDS):
            return _judge(vmi_json, domain_xml, environ, on_error)
    except _BadInput as e:
        return Answer(EXIT_BAD_INPUT, b"", (str(e),))
    except BaseException as e:  # the shim must never see a traceback
        why = (f"no decision within {DEADLINE_SECONDS} s" if isinstance(e, Deadline)
               else str(e) if isinstance(e, InputError)
               else f"internal error: {type(e).__name__}: {str(e)[:300]}")
        if on_error[0] == "refuse":
            return Answer(EXIT_REFUSE, b"", (f"cannot check this VMI ({why}); the policy's "
                                             f"on-error is refuse, so the sync fails",))
        return Answer(EXIT_OK, domain_xml, (f"cannot check this VMI ({why}); passing the "
                                            f"domain through unchanged (on-error allow)",))


class _BadInput(Exception):
    """The VMI JSON or the domain XML is unusable: exit 2, whatever on-error says."""


def _judge(vmi_json: bytes, domain_xml: bytes, environ: Mapping[str, str],
           on_error: list[str]) -> Answer:
    from ..accounting.report import assess
    from ..baselines.kubevirt import Vmi
    from ..domain import Domain
    from ..host.cache import hook_facts
    from ..policy import load as policy_load
    from ..policy.model import PolicyError, plugin_manager, policy_path, to_settings
    from ..support import xmlsafe
    from ..support.defaults import FACTS_CACHE
    from . import vmi as vmimod

    # Bad input is exit 2 whatever the policy says, so it is read first.
    try:
        doc = vmimod.load(vmi_json, node_arch=_node_arch())
        if len(domain_xml) > MAX_XML_BYTES:
            raise InputError(f"--domain is larger than {MAX_XML_BYTES // 1024 // 1024} MiB")
        root = xmlsafe.parse(domain_xml, what="--domain XML")
        domain = Domain.from_xml(root)
    except InputError as e:
        raise _BadInput(str(e)) from None
    path, named = policy_path(None, environ=environ)
    try:
        policy = policy_load.load(path, named=named)
    except PolicyError as e:  # still honour an on-error that can be read from it
        if e.on_error is not None:
            on_error[0] = e.on_error.value
        raise
    on_error[0] = policy.on_error.value
    notes: list[str] = []
    version, ratio = resolve(environ, policy, doc.launcher_image, notes)
    settings = to_settings(policy, platform="kubevirt")._replace(
        kubevirt_version=version, kubevirt_overhead_ratio=ratio)
    vmi: Vmi = doc.vmi
    expected = vmi.name.replace("/", "_", 1)
    if domain.name != expected:
        notes.append(f"the domain is {domain.name!r}, not {expected!r} as virt-launcher "
                     f"names VMI {vmi.name}: are --vmi and --domain from the same VMI?")
    if doc.sidecars > 1 and domain.iommu is None:
        notes.append(f"this VMI has {doc.sidecars} hook sidecars and KubeVirt does not order "
                     f"them: devices another sidecar adds later (an <iommu>) are not judged")
    report = assess(domain, hook_facts((), FACTS_CACHE), settings, plugin_manager(policy),
                    vmi=vmi)
    return _answer(report, policy, domain_xml, notes)


def resolve(environ: Mapping[str, str], policy: Policy, launcher_image: str | None,
            notes: list[str]) -> tuple[str, str | None]:
    """(KubeVirt version, overhead ratio): environment, policy, the VMI, the defaults."""
    from ..baselines import kubevirt

    version: str | None
    if environ.get(KUBEVIRT_VERSION_ENV):
        version = str(kubevirt.parse_version(environ[KUBEVIRT_VERSION_ENV],
                                             what=f"${KUBEVIRT_VERSION_ENV}"))
    elif policy.kubevirt_version:
        version = policy.kubevirt_version  # checked when the policy was read
    else:
        tag = (launcher_image or "").rpartition(":")[2] if "@" not in (launcher_image or "") \
            else ""
        try:
            version = str(kubevirt.parse_version(tag)) if tag else None
        except InputError:
            version = None
        if version is not None:
            notes.append(f"KubeVirt version {version} taken from the VMI's launcher image; "
                         f"set ${KUBEVIRT_VERSION_ENV} to be sure (virt-handler, which sets "
                         f"the limit, can differ during an upgrade)")
        else:
            version = kubevirt.DEFAULT_VERSION
            notes.append(f"warning: KubeVirt version unknown (set ${KUBEVIRT_VERSION_ENV} or "
                         f"<kubevirt-version>); assuming {version}")
    ratio: str | None
    if KUBEVIRT_RATIO_ENV in environ:  # set and empty: the ratio is unset
        raw = environ[KUBEVIRT_RATIO_ENV].strip()
        ratio = kubevirt.parse_ratio(raw, what=f"${KUBEVIRT_RATIO_ENV}") if raw else None
    elif policy.kubevirt_overhead_ratio:
        ratio = policy.kubevirt_overhead_ratio
    else:
        ratio = None
        notes.append(f"warning: additionalGuestMemoryOverheadRatio unknown (set "
                     f"${KUBEVIRT_RATIO_ENV} or <kubevirt-overhead-ratio>; 1.0 means "
                     f"unset); assuming it is unset")
    return version, ratio


def _answer(report: Report, policy: Policy, domain_xml: bytes, notes: list[str]) -> Answer:
    from .. import __version__
    from ..accounting.verdict import Fit
    from ..policy.model import OnShortfall
    from .splice import verdict_element, with_verdict

    v = report.verdict
    attrs = {"verdict": v.fit.value, "mode": v.mode.value,
             "required": str(v.required),
             "limit": "unlimited" if v.limit.bytes is None else str(v.limit.bytes),
             "kubevirt": report.kubevirt.version, "memlock-guard": __version__}
    if v.limit.blocked:
        attrs["libvirt-demand"] = str(v.limit.demand)
    spliced = with_verdict(domain_xml, verdict_element(attrs))
    if v.fit is not Fit.SHORT:
        return Answer(EXIT_OK, spliced, tuple(notes))
    text = paragraph(report)
    if policy.on_shortfall is OnShortfall.WARN:
        return Answer(EXIT_OK, spliced, (*notes, f"warning (on-shortfall warn, the VMI goes "
                                                  f"on): {text}"))
    return Answer(EXIT_REFUSE, b"", (*notes, f"refused VMI {text}"))


def paragraph(report: Report) -> str:
    """The VMI, why it is short, the biggest items, and KubeVirt's remedies."""
    from ..accounting.remedy import sentence
    from ..support.units import human

    v, kv, lv = report.verdict, report.kubevirt, report.libvirt
    name = kv.vmi.name if kv.vmi is not None else report.domain.name
    need = (f"needs {human(v.required)} ({v.required} bytes) of locked memory in "
            f"{v.mode.value} accounting ({v.mode_reason})")
    if v.limit.blocked:
        assert v.limit.demand is not None and v.limit.bytes is not None
        why = (f"libvirt in the virt-launcher pod sets QEMU's locked-memory limit to "
               f"{human(v.limit.demand)} ({v.limit.demand} bytes: {lv.explanation}), above "
               f"the {human(v.limit.bytes)} ({v.limit.bytes} bytes: {kv.explanation}) that "
               f"virt-handler allows, so QEMU cannot start (cannot limit locked memory); "
               f"short by {human(v.limit.demand - v.limit.bytes)}. The VMI {need}")
    else:
        limit = v.limit.bytes or 0
        why = (f"QEMU gets {human(limit)} ({limit} bytes) from {v.limit.explanation}, but "
               f"it {need}; short by {human(v.required - limit)}")
    items = "; ".join(f"{i.source} {human(i.bytes)}"
                      + (f" x {i.containers} containers" if i.containers > 1 else "")
                      for i in report.ledger.biggest(3))
    return (f"{name} (KubeVirt {kv.version}): {why}. Biggest items: {items}. "
            f"Remedy: {sentence(report)}")


def _node_arch() -> str:
    """spec.architecture's default: the node's (Go's runtime.GOARCH names)."""
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


class _deadline:
    """SIGALRM after ``seconds`` raises Deadline in the main thread."""

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds
        self.old: object = None

    def __enter__(self) -> None:
        import signal

        def fire(_signum: int, _frame: object) -> None:
            raise Deadline()

        try:
            self.old = signal.signal(signal.SIGALRM, fire)
            signal.alarm(self.seconds)
        except ValueError:
            self.old = None  # not the main thread (tests): no deadline

    def __exit__(self, *_exc: object) -> None:
        import signal

        if self.old is not None:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, self.old)  # type: ignore[arg-type]
