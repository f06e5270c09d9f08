#!/usr/bin/env bash
# Build the source RPM memlock-guard-VERSION-RELEASE.src.rpm from this checkout:
#
#   packaging/build-srpm.sh OUTDIR
#
# Packs the files git tracks (as they are in the work tree) into
# memlock-guard-VERSION.tar.gz and runs rpmbuild -bs on packaging/rpm/memlock-guard.spec.
# This works on Debian (apt's rpm package has rpmbuild; it is installed when missing, as
# root). A binary RPM needs Fedora's python and systemd RPM macros: build it from the
# source RPM there (rpmbuild --rebuild, or mock). The .src.rpm's path is printed.
#
# On failure it prints one line naming what failed and exits 1 (2 for bad usage).
set -euo pipefail

die() { echo "build-srpm: $*" >&2; exit 1; }

[[ $# -eq 1 && -n $1 ]] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
export PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
spec=$src/packaging/rpm/memlock-guard.spec
mkdir -p "$1" 2>/dev/null || die "cannot create OUTDIR $1"
out=$(cd "$1" && pwd)

need=()
command -v rpmbuild >/dev/null || need+=(rpm)
command -v git >/dev/null || need+=(git)
if ((${#need[@]})); then
    ((EUID == 0)) || die "${need[*]} missing; install it, or run as root"
    export DEBIAN_FRONTEND=noninteractive
    inst=(apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 "${need[@]}")
    echo "build-srpm: installing ${need[*]}" >&2
    "${inst[@]}" >/dev/null 2>&1 || { apt-get update -q && "${inst[@]}"; } >/dev/null 2>&1 ||
        die "apt-get install ${need[*]} failed"
fi
git -C "$src" rev-parse --is-inside-work-tree >/dev/null 2>&1 ||
    die "$src is not a git checkout (the source tarball holds the files git tracks)"

version=$(rpmspec -q --srpm --qf '%{VERSION}\n' "$spec" 2>/dev/null | head -n 1) ||
    die "cannot parse $spec"
py_version=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
    "$src/pyproject.toml" 2>/dev/null) || die "cannot read the version in pyproject.toml"
[[ $version == "$py_version" ]] ||
    die "the spec is at Version $version but pyproject.toml at $py_version"

tmp=$(mktemp -d /tmp/memlock-guard-srpm.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/SOURCES" "$tmp/stage/memlock-guard-$version"
(cd "$src" && git ls-files -z | tar --null -T - -cf -) 2>/dev/null |
    tar -C "$tmp/stage/memlock-guard-$version" -xf - 2>/dev/null ||
    die "cannot copy the tracked files of $src"
# A reproducible tarball: sorted names, fixed owner and the last commit's time.
mtime=$(git -C "$src" log -1 --format=%ct 2>/dev/null || echo 0)
tar -C "$tmp/stage" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$mtime" \
    -czf "$tmp/SOURCES/memlock-guard-$version.tar.gz" "memlock-guard-$version" ||
    die "cannot write the source tarball"

if ! msg=$(rpmbuild -bs --define "_topdir $tmp" "$spec" 2>&1); then
    die "rpmbuild -bs failed: $(tail -n 1 <<<"$msg")"
fi
srpm=$(find "$tmp/SRPMS" -name "memlock-guard-$version-*.src.rpm" -print -quit)
[[ -n $srpm ]] || die "rpmbuild left no memlock-guard-$version-*.src.rpm"
cp "$srpm" "$out/" || die "cannot copy $(basename "$srpm") to $out"
echo "$out/$(basename "$srpm")"
