#!/usr/bin/env bash
# Set up memlock-guard on a fresh Debian 12 machine (as root): the Debian packages that
# libvirt-python builds against, a virtualenv in .venv with the package installed
# editable, and
# - with --with-libvirtd, the libvirt daemon and QEMU the e2e tests drive;
# - with --with-packaging, what the packaging tests need (debhelper, dh-python, lintian,
#   rpm, rpmlint), and .venv-debian: Debian's own /usr/bin/python3 with its python3-lxml,
#   -pluggy, -libvirt and -tenacity (--system-site-packages), the package installed
#   editable without dependencies, built by Debian's setuptools. The unit tests run there
#   too, so that the versions the .deb depends on are the versions tested.
# Idempotent: packages already installed are not fetched again.
set -euo pipefail
cd "$(dirname "$0")/.."

with_daemon=0
with_packaging=0
for arg in "$@"; do
  case $arg in
    --with-libvirtd) with_daemon=1 ;;
    --with-packaging) with_packaging=1 ;;
    *) echo "usage: $0 [--with-libvirtd] [--with-packaging]" >&2; exit 2 ;;
  esac
done

pkgs=(libvirt-dev pkg-config gcc)
# qemu-system-arm + qemu-efi-aarch64 (aarch64 guests under TCG with AAVMF) and
# qemu-system-ppc (pSeries definitions) are for the real-QEMU layout and pSeries tests.
((with_daemon)) && pkgs+=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
                         qemu-system-x86 ovmf qemu-system-arm qemu-efi-aarch64
                         qemu-system-ppc)
((with_packaging)) && pkgs+=(git debhelper dh-python pybuild-plugin-pyproject python3-all
                            python3-setuptools python3-wheel python3-venv lintian rpm rpmlint
                            python3-lxml python3-pluggy python3-libvirt python3-tenacity
                            python3-pytest python3-hypothesis python3-jsonschema
                            python3-jinja2 python3-yaml)
python3 -c 'import venv, ensurepip' 2>/dev/null || pkgs+=(python3-venv)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
# Reinstall only when pyproject.toml (or the example plugin) changed since the last
# install. The example plugin is installed but not allowed by any default policy: the
# tests check that it counts only once a policy allows it (docs/plugins.md).
stamp=.venv/.memlock-guard-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp || -n $(find examples/plugin -newer "$stamp") ]]; then
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[libvirt,test]' atheris
  .venv/bin/pip install -q --no-deps ./examples/plugin
  touch "$stamp"
fi
if ((with_packaging)); then
  stamp=.venv-debian/.memlock-guard-installed
  if [[ ! -x .venv-debian/bin/python || ! -f $stamp || pyproject.toml -nt $stamp ||
        -n $(find examples/plugin -newer "$stamp") ]]; then
    rm -rf .venv-debian
    /usr/bin/python3 -m venv --system-site-packages .venv-debian
    .venv-debian/bin/python -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
    # The example plugin too: its tests load it through Debian's pluggy 1.0.
    .venv-debian/bin/python -m pip install -q --no-deps --no-build-isolation \
      ./examples/plugin >/dev/null
    touch "$stamp"
  fi
fi
echo "setup: ready (.venv/bin/memlock-guard)" >&2
