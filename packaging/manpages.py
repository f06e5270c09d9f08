#!/usr/bin/env python3
"""Man pages for memlock-guard and each of its verbs, generated from the argparse help.

    PYTHONPATH=plugin python3 packaging/manpages.py OUTDIR

writes OUTDIR/memlock-guard.1 and OUTDIR/memlock-guard-VERB.1 for every verb. The .deb
and the .rpm run it at build time, so a page can never disagree with ``--help``. It
imports nothing of memlock-guard but ``memlock_guard.cli.build_parser``. The date is
SOURCE_DATE_EPOCH's (set by dpkg-buildpackage and rpmbuild: reproducible builds), else
today's.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

PROG = "memlock-guard"
SECTION = "1"
WHATIS = "locked-memory policy for libvirt/QEMU passthrough VMs"

# Paths every page refers to (README: "Policy", "Audit log", "The libvirt hook").
FILES = (
    ("/etc/memlock-guard/policy.xml",
     "the host policy (RelaxNG: /usr/share/memlock-guard/policy.rng); no file means the "
     "built-in defaults"),
    ("/etc/libvirt/hooks/qemu.d/50-memlock-guard",
     "the libvirt qemu hook, which judges every start, restore and incoming migration"),
    ("/var/lib/memlock-guard/host-facts.json",
     "libvirt and QEMU versions and QEMU's data directories, cached for the hook"),
    ("/var/lib/memlock-guard/decisions/",
     "decisions the hook replays while nothing they depend on has changed"),
    ("/var/log/memlock-guard/audit.jsonl",
     "the audit log: one JSON object per decision"),
)


def esc(text: str) -> str:
    """Text for roff: backslashes and hyphens escaped, no line taken for a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line
                     for line in text.split("\n"))


def bold(text: str) -> str:
    return f"\\fB{esc(text)}\\fR"


def ital(text: str) -> str:
    return f"\\fI{esc(text)}\\fR"


def prose(text: str) -> list[str]:
    """argparse's raw description as roff: paragraphs filled, indented lines kept."""
    out: list[str] = []
    for para in re.split(r"\n\s*\n", text.strip("\n")):
        lines = para.split("\n")
        out.append(".PP")
        i = 0
        while i < len(lines):
            if lines[i].startswith(" "):
                block = []
                while i < len(lines) and lines[i].startswith(" "):
                    block.append(lines[i])
                    i += 1
                cut = min(len(b) - len(b.lstrip(" ")) for b in block)
                out += [".RS 4", ".nf", *(esc(b[cut:]) for b in block), ".fi", ".RE"]
            else:
                filled = []
                while i < len(lines) and not lines[i].startswith(" "):
                    filled.append(lines[i].strip())
                    i += 1
                out.append(esc(" ".join(filled)))
    return out


def expand_help(action: argparse.Action, prog: str) -> str:
    """An action's help with %(default)s and friends filled in, as argparse does."""
    params = dict(vars(action), prog=prog)
    params = {k: v for k, v in params.items() if v is not argparse.SUPPRESS}
    for key, value in list(params.items()):
        if hasattr(value, "__name__"):
            params[key] = value.__name__
    if params.get("choices") is not None:
        params["choices"] = ", ".join(str(c) for c in params["choices"])
    return (action.help or "") % params


def option_lines(parser: argparse.ArgumentParser, prog: str) -> list[str]:
    out: list[str] = []
    for group in parser._action_groups:
        shown = [a for a in group._group_actions
                 if a.help is not argparse.SUPPRESS
                 and not isinstance(a, argparse._SubParsersAction)]
        if not shown:
            continue
        title = group.title or "options"
        out.append(f".SS {esc(title[:1].upper() + title[1:])}")
        for a in shown:
            if a.option_strings:
                metavar = None
                if a.nargs != 0:
                    metavar = a.metavar or (
                        "{" + ",".join(map(str, a.choices)) + "}" if a.choices
                        else a.dest.upper())
                forms = ", ".join(bold(s) + (" " + ital(str(metavar)) if metavar else "")
                                  for s in a.option_strings)
            else:
                forms = ital(str(a.metavar or a.dest))
            out += [".TP", forms, esc(expand_help(a, prog))]
    return out


def synopsis(parser: argparse.ArgumentParser) -> list[str]:
    usage = parser.format_usage().strip()
    usage = re.sub(r"^usage:\s*", "", usage)
    usage = " ".join(usage.split())
    name, _, rest = usage.partition(" ")
    verb = ""
    if rest and not rest.startswith(("[", "-", "{")) and name == PROG:
        verb, _, rest = rest.partition(" ")
    cmd = f"{name} {verb}".strip()
    return [".B " + esc(cmd), esc(rest)]


def header(title: str, version: str, date: str) -> list[str]:
    return [f'.TH {esc(title.upper())} {SECTION} "{date}" "{esc(version)}" '
            '"memlock-guard manual"']


def verb_parsers(parser: argparse.ArgumentParser
                 ) -> list[tuple[str, str, argparse.ArgumentParser]]:
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            helps = {c.dest: c.help or "" for c in a._choices_actions}
            return [(name, helps.get(name, ""), sub) for name, sub in a.choices.items()]
    return []


def files_section() -> list[str]:
    out = [".SH FILES"]
    for path, what in FILES:
        out += [".TP", ital(path), esc(what)]
    return out


def main_page(parser: argparse.ArgumentParser, version: str, date: str) -> str:
    verbs = verb_parsers(parser)
    lines = header(PROG, version, date)
    lines += [".SH NAME", f"{esc(PROG)} \\- {esc(WHATIS)}", ".SH SYNOPSIS",
              ".B " + esc(PROG), esc("VERB [options]"), ".br",
              ".B " + esc(PROG), esc("--version | --help"),
              ".SH DESCRIPTION", *prose(parser.description or ""), ".SH VERBS"]
    for name, help_, _ in verbs:
        lines += [".TP", bold(name), esc(help_) + f" (see {bold(f'{PROG}-{name}')}({SECTION}))"]
    lines += [".SH OPTIONS", *option_lines(parser, PROG), *files_section(), ".SH SEE ALSO"]
    refs = [f"{PROG}-{name}" for name, _, _ in verbs]
    lines.append(",\n".join(f".BR {esc(r)} ({SECTION})" for r in refs) + ",")
    lines.append(".BR virsh (1)")
    return "\n".join(lines) + "\n"


def verb_page(name: str, help_: str, sub: argparse.ArgumentParser, version: str,
              date: str, others: list[str]) -> str:
    page = f"{PROG}-{name}"
    lines = header(page, version, date)
    lines += [".SH NAME", f"{esc(page)} \\- {esc(help_)}", ".SH SYNOPSIS", *synopsis(sub),
              ".SH DESCRIPTION", *prose(sub.description or ""),
              ".SH OPTIONS", *option_lines(sub, sub.prog), *files_section(), ".SH SEE ALSO"]
    refs = [PROG] + [f"{PROG}-{o}" for o in others if o != name]
    lines.append(",\n".join(f".BR {esc(r)} ({SECTION})" for r in refs))
    return "\n".join(lines) + "\n"


def build_date() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    t = int(epoch) if epoch and epoch.isdigit() else int(time.time())
    return time.strftime("%Y-%m-%d", time.gmtime(t))


def version_of(parser: argparse.ArgumentParser) -> str:
    for a in parser._actions:
        if isinstance(a, argparse._VersionAction) and a.version:
            return a.version.replace("%(prog)s", PROG)
    return PROG


def write_pages(outdir: Path) -> list[Path]:
    # argparse wraps usage lines to the terminal's width; a page is filled by roff.
    os.environ["COLUMNS"] = "1000"
    from memlock_guard.cli import build_parser

    parser = build_parser()
    version, date = version_of(parser), build_date()
    outdir.mkdir(parents=True, exist_ok=True)
    verbs = verb_parsers(parser)
    names = [name for name, _, _ in verbs]
    written = [outdir / f"{PROG}.{SECTION}"]
    written[0].write_text(main_page(parser, version, date))
    for name, help_, sub in verbs:
        path = outdir / f"{PROG}-{name}.{SECTION}"
        path.write_text(verb_page(name, help_, sub, version, date, names))
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: manpages.py OUTDIR", file=sys.stderr)
        return 2
    for path in write_pages(Path(argv[0])):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
