"""Hostile domain XML inputs, shared by tests/unit/test_hostile_cli.py, the hook tests
and bench/hostile_inputs.py (which times each one in a subprocess).

Each case builds its input in a scratch directory and says what must happen: the exit
status, a piece of the one stderr line that names the problem, and strings that must
never appear in any output (a secret file's content, /etc/passwd's first line).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

# Pinned host facts (the same numbers as tests/conftest.py's PINNED_HOST, repeated so
# that the benchmark can import this module without pytest).
PINNED_HOST = {
    "probe_host": False, "kernel_release": "6.1.0", "libvirt_version": "9.0.0",
    "qemu_version": "7.2.0", "inherited_memlock_bytes": 67108864,
    "rom_sizes": {"bios-256k.bin": 262144, "efi-virtio.rom": 249344,
                  "vgabios-stdvga.bin": 39936},
}

GiB = 1024**3
MB50 = 50 * 1000 * 1000

DOMAIN = ("<domain type='kvm'><name>{name}</name><memory unit='GiB'>4</memory>"
          "<vcpu>2</vcpu><os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>"
          "<devices>{devices}</devices></domain>")
HOSTDEV = ("<hostdev mode='subsystem' type='pci' managed='yes'><source><address "
           "domain='0x0000' bus='0x{bus:02x}' slot='0x{slot:02x}' function='0x{fn:x}'/>"
           "</source></hostdev>")


@dataclass
class Ctx:
    """Where a case builds its input, and what it must never leak."""

    dir: Path
    secret: str = field(default_factory=lambda: "mg-secret-" + secrets.token_hex(8))
    port: int = 9  # a local TCP port nobody may connect to (set by the caller)

    @property
    def secret_file(self) -> Path:
        p = self.dir / "secret.txt"
        if not p.exists():
            p.write_text(self.secret + "\n")
        return p

    @property
    def host_file(self) -> Path:
        p = self.dir / "host.json"
        if not p.exists():
            p.write_text(json.dumps(PINNED_HOST))
        return p

    def file(self, name: str, data: bytes) -> Path:
        p = self.dir / name
        p.write_bytes(data)
        return p


@dataclass(frozen=True)
class Input:
    xml: str  # a path, or "-" for stdin
    stdin: bytes | None = None


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Ctx], Input]
    exit: int = 2
    message: str = ""  # must appear in the one stderr line (exit 2) or stdout (exit 0)
    # Part of every hostile family: also fed to the hook when it exists.
    hook: bool = True


def domain(devices: str = "", name: str = "hostile") -> str:
    return DOMAIN.format(name=name, devices=devices)


def hostdevs(n: int) -> str:
    return "".join(HOSTDEV.format(bus=1 + i // 256, slot=(i // 8) % 32, fn=i % 8)
                   for i in range(n))


def _doc(ctx: Ctx, name: str, text: str, encoding: str = "utf-8") -> Input:
    return Input(str(ctx.file(name, text.encode(encoding))))


def _xxe_file(ctx: Ctx) -> Input:
    return _doc(ctx, "xxe-file.xml",
                f'<?xml version="1.0"?>\n<!DOCTYPE domain [<!ENTITY x SYSTEM '
                f'"file://{ctx.secret_file}">]>\n'
                + domain().replace("hostile", "&x;"))


def _xxe_passwd(ctx: Ctx) -> Input:
    return _doc(ctx, "xxe-passwd.xml",
                '<!DOCTYPE domain [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                + domain().replace("hostile", "&x;"))


def _xxe_utf16(ctx: Ctx) -> Input:
    # UTF-16 hides "<!DOCTYPE" from a byte-level check; the parser must not care.
    return _doc(ctx, "xxe-utf16.xml",
                f'<?xml version="1.0" encoding="UTF-16"?>\n<!DOCTYPE domain [<!ENTITY x '
                f'SYSTEM "file://{ctx.secret_file}">]>\n' + domain().replace("hostile", "&x;"),
                encoding="utf-16")


def _xxe_utf16_nobom(ctx: Ctx) -> Input:
    return _doc(ctx, "xxe-utf16le.xml",
                f'<?xml version="1.0" encoding="UTF-16LE"?><!DOCTYPE domain [<!ENTITY x '
                f'SYSTEM "file://{ctx.secret_file}">]>' + domain().replace("hostile", "&x;"),
                encoding="utf-16-le")


def _xxe_network(ctx: Ctx) -> Input:
    return _doc(ctx, "xxe-net.xml",
                f'<!DOCTYPE domain [<!ENTITY x SYSTEM "http://127.0.0.1:{ctx.port}/x">]>'
                + domain().replace("hostile", "&x;"))


def _external_dtd(ctx: Ctx) -> Input:
    dtd = ctx.file("evil.dtd", f'<!ENTITY x SYSTEM "file://{ctx.secret_file}">'.encode())
    return _doc(ctx, "ext-dtd.xml",
                f'<!DOCTYPE domain SYSTEM "file://{dtd}">' + domain().replace("hostile", "&x;"))


def _external_dtd_network(ctx: Ctx) -> Input:
    return _doc(ctx, "ext-dtd-net.xml",
                f'<!DOCTYPE domain SYSTEM "http://127.0.0.1:{ctx.port}/evil.dtd">' + domain())


def _parameter_entity(ctx: Ctx) -> Input:
    return _doc(ctx, "param-entity.xml",
                f'<!DOCTYPE domain [<!ENTITY % p SYSTEM "file://{ctx.secret_file}"> %p;]>'
                + domain())


def _billion_laughs(ctx: Ctx) -> Input:
    ents = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">' for i in range(1, 10)]
    return _doc(ctx, "billion-laughs.xml",
                f"<!DOCTYPE domain [{''.join(ents)}]>" + domain().replace("hostile", "&lol9;"))


def _quadratic_blowup(ctx: Ctx) -> Input:
    big = "A" * 100_000
    return _doc(ctx, "quadratic.xml",
                f'<!DOCTYPE domain [<!ENTITY a "{big}">]>'
                + domain().replace("hostile", "&a;" * 10_000))


def _xinclude(ctx: Ctx) -> Input:
    # XInclude is only an unknown element unless someone processes it: we never do.
    return _doc(ctx, "xinclude.xml", domain().replace(
        "<name>hostile</name>",
        "<name>hostile</name><description><xi:include xmlns:xi='http://www.w3.org/2001/XInclude'"
        f" href='{ctx.secret_file}' parse='text'/></description>"))


def _huge_file(ctx: Ctx) -> Input:
    pad = b"<!-- " + b"x" * (MB50 - 200) + b" -->"
    return Input(str(ctx.file("huge.xml", domain().encode().replace(b"<devices>",
                                                                     b"<devices>" + pad))))


def _huge_stdin(ctx: Ctx) -> Input:
    return Input("-", domain(" " * MB50).encode())


def _deep(ctx: Ctx) -> Input:
    return _doc(ctx, "deep.xml", domain("<a>" * 10_000 + "</a>" * 10_000))


def _wide(ctx: Ctx) -> Input:
    # 2 million tiny elements in under 16 MiB: the tree, not the bytes, is the cost.
    return _doc(ctx, "wide.xml", domain("<hostdev/>" * 1_600_000))


def _bad_utf8(ctx: Ctx) -> Input:
    return Input(str(ctx.file("bad-utf8.xml",
                              domain().encode().replace(b"hostile", b"host\xc3\x28ile"))))


def _latin1_declared(ctx: Ctx) -> Input:
    # A declaration naming another encoding is overridden, so the bytes must be UTF-8.
    return Input(str(ctx.file("latin1.xml", b'<?xml version="1.0" encoding="ISO-8859-1"?>'
                              + domain().encode().replace(b"hostile", b"h\xf6st"))))


def _nul(ctx: Ctx) -> Input:
    return Input(str(ctx.file("nul.xml", domain().encode().replace(b"hostile", b"ho\x00st"))))


def _binary(ctx: Ctx) -> Input:
    return Input(str(ctx.file("binary.xml", bytes(range(256)) * 64)))


def _empty_stdin(ctx: Ctx) -> Input:
    return Input("-", b"")


def _blank_stdin(ctx: Ctx) -> Input:
    return Input("-", b" \n\t\n")


def _wrong_root(ctx: Ctx) -> Input:
    return _doc(ctx, "network.xml", "<network><name>default</name></network>")


def _namespaced_root(ctx: Ctx) -> Input:
    return _doc(ctx, "ns-root.xml", domain().replace("<domain ", "<domain xmlns='urn:x' "))


def _truncated(ctx: Ctx) -> Input:
    return _doc(ctx, "truncated.xml", domain()[:-20])


def _missing_file(ctx: Ctx) -> Input:
    return Input(str(ctx.dir / "does-not-exist.xml"))


def _directory(ctx: Ctx) -> Input:
    return Input(str(ctx.dir))


def _value(xml: str, name: str) -> Callable[[Ctx], Input]:
    return lambda ctx: _doc(ctx, f"{name}.xml", xml)


def _mem(memory: str) -> str:
    return domain(hostdevs(1)).replace("<memory unit='GiB'>4</memory>", memory)


CASES: tuple[Case, ...] = (
    # Entities and DTDs
    Case("xxe-file", _xxe_file, message="DOCTYPE"),
    Case("xxe-etc-passwd", _xxe_passwd, message="DOCTYPE"),
    Case("xxe-utf16", _xxe_utf16, message="not UTF-8"),
    Case("xxe-utf16-no-bom", _xxe_utf16_nobom, message="not UTF-8"),
    Case("xxe-network", _xxe_network, message="DOCTYPE"),
    Case("external-dtd-file", _external_dtd, message="DOCTYPE"),
    Case("external-dtd-network", _external_dtd_network, message="DOCTYPE"),
    Case("parameter-entity", _parameter_entity, message="DOCTYPE"),
    Case("billion-laughs", _billion_laughs, message="DOCTYPE"),
    Case("quadratic-blowup", _quadratic_blowup, message="DOCTYPE"),
    Case("xinclude-ignored", _xinclude, exit=0, message="hostile"),
    # Size and shape
    Case("50MB-file", _huge_file, message="larger than 16 MiB"),
    Case("50MB-stdin", _huge_stdin, message="larger than 16 MiB"),
    Case("10000-deep", _deep, message="levels deep"),
    Case("1.6M-elements", _wide, message="more than 100000 elements"),
    Case("invalid-utf8", _bad_utf8, message="not valid UTF-8"),
    Case("latin1-declared", _latin1_declared, message="not valid UTF-8"),
    Case("nul-byte", _nul, message="not well-formed"),
    Case("binary-garbage", _binary, message="not UTF-8"),
    Case("empty-stdin", _empty_stdin, message="empty"),
    Case("blank-stdin", _blank_stdin, message="empty"),
    Case("wrong-root", _wrong_root, message="root element is <network>"),
    Case("namespaced-root", _namespaced_root, message="not <domain>"),
    Case("truncated", _truncated, message="not well-formed"),
    Case("missing-file", _missing_file, message="No such file", hook=False),
    Case("directory", _directory, message="cannot read", hook=False),
    # Values
    Case("no-memory", _value(_mem(""), "no-memory"), message="no <memory>"),
    Case("empty-memory", _value(_mem("<memory></memory>"), "empty-memory"),
         message="no <memory>"),
    Case("zero-memory", _value(_mem("<memory>0</memory>"), "zero-memory"),
         message="<memory> is zero"),
    Case("negative-memory", _value(_mem("<memory>-4194304</memory>"), "neg-memory"),
         message="invalid value '-4194304'"),
    Case("minus-zero-memory", _value(_mem("<memory>-0</memory>"), "neg0-memory"),
         message="invalid value '-0'"),
    Case("overflow-memory", _value(_mem("<memory unit='EiB'>8</memory>"), "ovf-memory"),
         message="too large"),
    Case("overflow-ullong", _value(_mem("<memory>18446744073709551616</memory>"),
                                   "ovf2-memory"), message="too large"),
    Case("huge-digits", _value(_mem("<memory>" + "9" * 100_000 + "</memory>"), "digits"),
         message="too large"),
    Case("float-memory", _value(_mem("<memory>4.5</memory>"), "float-memory"),
         message="expected a whole number"),
    Case("hex-memory", _value(_mem("<memory>0x100000</memory>"), "hex-memory"),
         message="expected a whole number"),
    Case("trailing-space-memory", _value(_mem("<memory>4194304 </memory>"), "ts-memory"),
         message="expected a whole number"),
    Case("unknown-unit", _value(_mem("<memory unit='GB2'>4</memory>"), "unit"),
         message="unknown unit 'GB2'"),
    Case("unicode-unit", _value(_mem("<memory unit='\u212aiB'>4</memory>"), "unit2"),
         message="unknown unit"),
    Case("padded-unit", _value(_mem("<memory unit=' GiB'>4</memory>"), "unit3"),
         message="unknown unit"),
    Case("overflow-vcpu", _value(domain().replace("<vcpu>2", "<vcpu>4294967296"), "vcpu"),
         message="<vcpu> value 4294967296 is too large"),
    Case("zero-vcpu", _value(domain().replace("<vcpu>2", "<vcpu>0"), "vcpu0"),
         message="<vcpu> is zero"),
    Case("overflow-vram", _value(domain("<video><model type='qxl' vram='4294967296'/></video>"),
                                 "vram"), message="vram= value 4294967296 is too large"),
    Case("negative-vram", _value(domain("<video><model type='vga' vram='-1'/></video>"),
                                 "vram2"), message="invalid value '-1'"),
    Case("overflow-hard-limit", _value(domain().replace(
        "<vcpu>", "<memtune><hard_limit unit='b'>9223372036854775807</hard_limit></memtune>"
        "<vcpu>"), "hard"), message="<memtune><hard_limit> value"),
    Case("overflow-numa-sum", _value(domain().replace(
        "<os>", "<cpu><numa><cell id='0' cpus='0' memory='8' unit='EB'/>"
        "<cell id='1' cpus='1' memory='8' unit='EB'/>"
        + "</numa></cpu><os>"), "numa"), message="more memory than libvirt can express"),
    Case("memory-device-without-size", _value(domain(
        "<memory model='dimm'><target><node>0</node></target></memory>"), "dimm"),
        message="has no <target><size>"),
    # Duplicates, as libvirt 9.0 reads them (docs/sources.md section 6): the first
    # <memory> wins; the hostdevs of every <devices> block count.
    Case("duplicate-memory", _value(_mem("<memory unit='GiB'>4</memory>"
                                         "<memory unit='GiB'>64</memory>"), "dup-memory"),
         exit=0, message="4 GiB memory"),
    Case("duplicate-devices-blocks", _value(domain(hostdevs(1)).replace(
        "</devices>", "</devices><devices>" + hostdevs(2)[len(hostdevs(1)):]
        + "<iommu model='intel'/></devices>"), "dup-devices"),
         exit=0, message="containers: 2 (VFIO"),
    Case("10000-qxl-cards", _value(domain(
        "<video><model type='qxl' ram='65536' vram='65536' vgamem='16384'/></video>" * 9_999
        + "<iommu model='intel'/>"), "qxl"), exit=0, message="hostile"),
    Case("10001-devices", _value(domain("<controller type='usb'/>" * 10_001), "devices"),
         message="more than the 10000"),
    Case("99k-elements-accepted", _value(domain().replace(
        "<vcpu>2</vcpu>", "<vcpu>2</vcpu><cputune>"
        + "<vcpupin vcpu='1' cpuset='1'/>" * 99_900 + "</cputune>"), "cputune"),
        exit=0, message="hostile"),
    Case("1000-hostdevs", _value(domain(hostdevs(1000)), "hostdevs"), exit=0,
         message="VFIO: one container shared by 1000 device(s)"),
    Case("1000-hostdevs-viommu", _value(domain(hostdevs(1000) + "<iommu model='intel'/>"),
                                        "hostdevs-viommu"), exit=0,
         message="1000 VFIO (vIOMMU: one each)"),
)


# -- policy files: broken, partial, unreadable-ish, or linked somewhere odd ---------------
# For the hook (which follows the on-error it can still read) and the CLI (exit 2).

NS = "urn:memlock-guard:policy:1"


class HasDir(Protocol):
    dir: Path


def policy_fifo(d: HasDir) -> Path:
    p = d.dir / "policy.fifo"
    os.mkfifo(p)
    return p


def policy_link(d: HasDir, target: str | Path) -> Path:
    p = d.dir / "policy-link.xml"
    p.symlink_to(target)
    return p


def policy_file(d: HasDir, data: bytes) -> Path:
    p = d.dir / "policy-file.xml"
    p.write_bytes(data)
    return p


POLICY_CASES: dict[str, tuple[Callable[[Any], Path], str, str]] = {
    # name: (make(env) -> path, on-error the hook must follow, piece of the message)
    "not-xml": (lambda e: policy_file(e, b"on-error = refuse\n"), "allow", "not well-formed"),
    "truncated-keeps-on-error": (lambda e: policy_file(
        e, f"<policy xmlns='{NS}'><on-error>refuse</on-error><mode>str".encode()),
        "refuse", "not well-formed"),
    "invalid-element-keeps-on-error": (lambda e: policy_file(
        e, f"<policy xmlns='{NS}'><on-error>refuse</on-error><bogus/></policy>".encode()),
        "refuse", "bogus"),
    "bad-value": (lambda e: policy_file(
        e, f"<policy xmlns='{NS}'><margin unit='MiB'>-1</margin></policy>".encode()),
        "allow", "margin"),
    "ambiguous-on-error": (lambda e: policy_file(
        e, f"<policy xmlns='{NS}'><on-error>refuse</on-error><on-error>allow</on-error>"
           "</policy>".encode()), "allow", "on-error"),
    "xxe": (lambda e: policy_file(e, f"<!DOCTYPE p [<!ENTITY x SYSTEM 'file:///etc/passwd'>]>"
                               f"<policy xmlns='{NS}'><audit-log>&x;</audit-log></policy>"
                               .encode()), "allow", "DOCTYPE"),
    "empty": (lambda e: policy_file(e, b""), "allow", "empty"),
    "too-large": (lambda e: policy_file(e, b" " * (300 * 1024)), "allow", "larger than"),
    "missing": (lambda e: e.dir / "nope.xml", "allow", "does not exist"),
    "dangling-symlink": (lambda e: policy_link(e, e.dir / "gone.xml"), "allow", "does not exist"),
    "symlink-to-etc-passwd": (lambda e: policy_link(e, "/etc/passwd"), "allow", "not well-formed"),
    "symlink-to-dev-zero": (lambda e: policy_link(e, "/dev/zero"), "allow", "not a regular file"),
    "symlink-to-fifo": (lambda e: policy_link(e, policy_fifo(e)), "allow", "not a regular file"),
    "directory": (lambda e: e.dir, "allow", "not a regular file"),
}



def by_name(name: str) -> Case:
    return next(c for c in CASES if c.name == name)
