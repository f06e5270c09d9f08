#!/usr/bin/env bash
# Build memlock-guard_VERSION_all.deb from this checkout:
#
#   packaging/build-deb.sh OUTDIR
#
# Copies the files git tracks (as they are in the work tree; no venv, no build leftovers)
# to a temporary directory, stages packaging/debian/ there as debian/, installs missing
# build dependencies with apt-get build-dep (as root), and runs dpkg-buildpackage -us -uc -b.
# DEB_BUILD_OPTIONS (e.g. nocheck) is passed on. The .deb and the build log
# (build-deb.log) are left in OUTDIR, and the .deb's path is printed.
#
# On failure it prints one line naming what failed and exits 1 (2 for bad usage).
set -euo pipefail

die() { echo "build-deb: $*" >&2; exit 1; }

[[ $# -eq 1 && -n $1 ]] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
# Debian's own python3 and tools, whatever venv or pyenv the caller has.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8
unset PYTHONPATH PYTHONHOME PYTHONSTARTUP VIRTUAL_ENV PYTHONUSERBASE

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$1" 2>/dev/null || die "cannot create OUTDIR $1"
out=$(cd "$1" && pwd)
log=$out/build-deb.log
: >"$log" || die "cannot write $log"

apt_install() {
    ((EUID == 0)) || die "missing build dependencies ($*); install them, or run as root"
    export DEBIAN_FRONTEND=noninteractive
    local inst=(apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300)
    echo "build-deb: installing $*" >&2
    { apt-cache show "$@" >/dev/null 2>&1 || apt-get update -q; } >>"$log" 2>&1
    "${inst[@]}" "$@" >>"$log" 2>&1 ||
        { apt-get update -q && "${inst[@]}" "$@"; } >>"$log" 2>&1 ||
        die "apt-get install $* failed (log: $log)"
}

for tool in git:git dpkg-checkbuilddeps:dpkg-dev dpkg-parsechangelog:dpkg-dev; do
    command -v "${tool%%:*}" >/dev/null || apt_install "${tool#*:}"
done

git -C "$src" rev-parse --is-inside-work-tree >/dev/null 2>&1 ||
    die "$src is not a git checkout (the build copies the files git tracks)"
[[ ! -e $src/debian ]] || die "$src/debian exists; the packaging lives in packaging/debian"

tmp=$(mktemp -d /tmp/memlock-guard-deb.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
tree=$tmp/memlock-guard
mkdir "$tree"
(cd "$src" && git ls-files -z | tar --null -T - -cf -) 2>>"$log" | tar -C "$tree" -xf - \
    2>>"$log" || die "cannot copy the tracked files of $src (log: $log)"
cp -a "$tree/packaging/debian" "$tree/debian"

# The Debian version's upstream part must be the Python package's version.
deb_version=$(dpkg-parsechangelog -l "$tree/debian/changelog" -S Version 2>>"$log") ||
    die "cannot read debian/changelog (log: $log)"
py_version=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
    "$tree/pyproject.toml" 2>>"$log") || die "cannot read the version in pyproject.toml"
upstream=${deb_version%%-*}
upstream=${upstream%%~*}
[[ $upstream == "$py_version" ]] ||
    die "debian/changelog is at $deb_version but pyproject.toml at $py_version; add a changelog entry"

if ! unmet=$(cd "$tree" && dpkg-checkbuilddeps 2>&1); then
    # apt resolves what dpkg-checkbuilddeps lists: virtual packages (debhelper-compat,
    # dh-sequence-python3), versions, alternatives and build profiles.
    ((EUID == 0)) || die "${unmet##*error: }; install them, or run as root"
    echo "build-deb: installing the build dependencies (${unmet##*: })" >&2
    export DEBIAN_FRONTEND=noninteractive
    bd=(apt-get build-dep -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 "$tree")
    "${bd[@]}" >>"$log" 2>&1 || { apt-get update -q && "${bd[@]}"; } >>"$log" 2>&1 ||
        die "apt-get build-dep failed (log: $log)"
    (cd "$tree" && dpkg-checkbuilddeps) >>"$log" 2>&1 ||
        die "build dependencies still unmet after apt-get build-dep (log: $log)"
fi

echo "build-deb: building memlock-guard $deb_version (log: $log)" >&2
if ! (cd "$tree" && dpkg-buildpackage -us -uc -b) >>"$log" 2>&1; then
    why=$(grep -E 'error|Error|FAILED|failed' "$log" | tail -n 1 | cut -c1-200)
    die "dpkg-buildpackage failed${why:+: $why} (log: $log)"
fi
deb=$(find "$tmp" -maxdepth 1 -name "memlock-guard_${deb_version#*:}_all.deb" -print -quit)
[[ -n $deb ]] || die "dpkg-buildpackage left no memlock-guard_${deb_version}_all.deb (log: $log)"
cp "$deb" "$out/" || die "cannot copy $(basename "$deb") to $out"
echo "$out/$(basename "$deb")"
