#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine (as root): installs what the
# tests need, starts a real libvirtd + QEMU, and runs lint, types, the unit and
# end-to-end tests, and a bounded fuzzing run. CI calls this (see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh --with-libvirtd
bash tests/e2e/libvirt_env.sh setup
bash tests/e2e/libvirt_env.sh start

echo "== ruff" && .venv/bin/ruff check plugin tests bench hooks
echo "== mypy" && .venv/bin/mypy
echo "== lint-imports" && .venv/bin/lint-imports --no-cache
echo "== pytest"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
