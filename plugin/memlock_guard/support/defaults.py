"""The facts every layer shares: paths, size caps, namespaces, the salvage patterns.

Each is defined here once and imported where it is used. Standard library only
(``os``, which every interpreter has loaded before it runs a line): the hook's cheapest
path imports this module, so it must cost nothing beyond its own constants.

``hooks/qemu`` must run without the package (to say so when the package is missing),
so it keeps the few values it needs as literals; tests/unit/test_defaults.py holds
those to the ones here.
"""

import os

# -- where things live in this installation ------------------------------------------------

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A source checkout (pip install -e): the package lives in plugin/ beside schemas/, hooks/.
SOURCE_ROOT = os.path.dirname(os.path.dirname(PACKAGE_DIR))


def package_file(data_name: str, source_path: str) -> str | None:
    """A file shipped with the package: ``data/NAME`` beside the code when installed
    from a wheel, else ``source_path`` in the checkout; None when neither exists."""
    for candidate in (os.path.join(PACKAGE_DIR, "data", data_name),
                      os.path.join(SOURCE_ROOT, source_path)):
        if os.path.isfile(candidate):
            return os.path.normpath(candidate)
    return None


# -- where things live on a host ---------------------------------------------------------

POLICY_PATH = "/etc/memlock-guard/policy.xml"
POLICY_ENV_VAR = "MEMLOCK_GUARD_POLICY"  # points the CLI (and tests) at another policy
AUDIT_LOG = "/var/log/memlock-guard/audit.jsonl"
STATE_DIR = "/var/lib/memlock-guard"
# install-hook caches what the hook cannot afford to probe on every start here.
FACTS_CACHE = f"{STATE_DIR}/host-facts.json"
DECISION_CACHE = f"{STATE_DIR}/decisions"
HOOKS_DIR = "/etc/libvirt/hooks"
# libvirt >= 6.5 runs every executable in qemu.d/ after the top-level qemu script.
HOOK_DROP_IN = "qemu.d/50-memlock-guard"
HOOK_MAIN_SCRIPT = "qemu"

# -- XML namespaces ------------------------------------------------------------------------

# The policy file's root and a domain's <metadata><mg:policy> override.
POLICY_NS = "urn:memlock-guard:policy:1"
# apply's provenance, <metadata><mga:applied>. A namespace of its own: libvirt keeps
# at most one <metadata> child per namespace (virXMLNodeSanitizeNamespaces), so it
# could not sit beside an <mg:policy> override.
APPLIED_NS = "urn:memlock-guard:applied:1"
APPLIED_PREFIX = "mga"
# The KubeVirt sidecar's verdict, <metadata><mgk:verdict>: its own namespace for the
# same reason (one <metadata> child per namespace).
KUBEVIRT_VERDICT_NS = "urn:memlock-guard:kubevirt:1"
KUBEVIRT_VERDICT_PREFIX = "mgk"
# OpenStack Nova's <metadata><nova:instance> (nova/virt/libvirt/config.py NOVA_NS): 1.1
# from Nova 23.0.0 (Wallaby, commit 838370a490), 1.0 before. Newest first.
NOVA_NAMESPACES = ("http://openstack.org/xmlns/libvirt/nova/1.1",
                   "http://openstack.org/xmlns/libvirt/nova/1.0")

# -- size caps -----------------------------------------------------------------------------

MiB = 1024 * 1024
# libvirt's RPC cap on one string (VIR_NET_MESSAGE_STRING_MAX, 10.x): no domain XML
# libvirt hands out is larger.
MAX_XML_BYTES = 16 * MiB
MAX_POLICY_BYTES = 256 * 1024  # a real policy is a few hundred bytes
MAX_FACTS_CACHE_BYTES = 64 * 1024  # install-hook's host-facts cache
MAX_HOST_FACTS_BYTES = 1 * MiB  # a --host-facts file given on the command line
# The KubeVirt sidecar's --vmi argument. The shim passes it as one argv string, which
# Linux caps at 128 KiB (MAX_ARG_STRLEN); 1 MiB leaves room for a direct invocation.
MAX_VMI_JSON_BYTES = 1 * MiB
# Nesting of that JSON: a real VMI is about 10 levels deep; Python's own parser would
# only stop at its recursion limit (about 1000), with a RecursionError.
MAX_JSON_DEPTH = 64
# attach-device's FILE: one device element is a few hundred bytes (virsh reads up to
# 10 MiB, VSH_MAX_XML_FILE, for any XML it is given).
MAX_DEVICE_XML_BYTES = 1 * MiB

# -- the KubeVirt sidecar's settings (environment, then the policy file) ------------------

KUBEVIRT_VERSION_ENV = "MEMLOCK_GUARD_KUBEVIRT_VERSION"
KUBEVIRT_RATIO_ENV = "MEMLOCK_GUARD_KUBEVIRT_OVERHEAD_RATIO"

# -- accounting defaults -------------------------------------------------------------------

DEFAULT_MARGIN = 64 * MiB  # added to every recommended hard_limit

# -- salvaging a broken policy -------------------------------------------------------------

# A policy file too broken to parse must still be able to say <on-error>refuse</on-error>
# and where its audit log is. These read the two values textually, with or without a
# namespace prefix; salvage() below is the one rule that applies them.
SALVAGE_ON_ERROR = rb"<(?:[A-Za-z_][\w.-]*:)?on-error\s*>\s*(allow|refuse)\s*<"
SALVAGE_AUDIT_LOG = rb"<(?:[A-Za-z_][\w.-]*:)?audit-log\s*>\s*(/[^<>\x00-\x1f]{0,4000}?)\s*<"


def salvage(data: bytes) -> tuple[str | None, str | None]:
    """(on-error, audit-log) read textually from a policy's bytes; only an unambiguous
    single value counts, anything else gives None (the defaults).

    The hook calls this before it has read the domain XML (and before lxml is loaded),
    so that a stuck stdin, or a domain XML too large to read, is still answered with the
    operator's on-error and audit log; policy/load.py calls it when a policy file does
    not parse or validate. Here, beside its patterns, because the hook's cheapest path
    imports this module anyway.
    """
    import re

    def one(pattern: bytes) -> str | None:
        found = set(re.findall(pattern, data[:MAX_POLICY_BYTES]))
        if len(found) != 1:
            return None
        return bytes(found.pop()).decode("ascii", "replace")

    return one(SALVAGE_ON_ERROR), one(SALVAGE_AUDIT_LOG)
