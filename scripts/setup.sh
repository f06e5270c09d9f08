#!/usr/bin/env bash
# Set up memlock-guard on a fresh Debian 12 machine (as root): the Debian packages that
# libvirt-python builds against, a virtualenv in .venv with the package installed
# editable, and (with --with-libvirtd) the libvirt daemon and QEMU the e2e tests drive.
# Idempotent: packages already installed are not fetched again.
set -euo pipefail
cd "$(dirname "$0")/.."

with_daemon=0
[[ "${1:-}" == "--with-libvirtd" ]] && with_daemon=1

pkgs=(libvirt-dev pkg-config gcc)
((with_daemon)) && pkgs+=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
                         qemu-system-x86 ovmf)
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
echo "setup: ready (.venv/bin/memlock-guard)" >&2
