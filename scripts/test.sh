#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine (as root): installs what the
# tests need, starts a real libvirtd + QEMU, and runs lint, types, the unit tests (also
# on Debian's own python3-* packages, which the .deb depends on), the end-to-end and
# packaging tests, and a bounded fuzzing run. CI calls this (see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh --with-libvirtd --with-packaging
bash tests/e2e/libvirt_env.sh setup
bash tests/e2e/libvirt_env.sh start

echo "== ruff" && .venv/bin/ruff check plugin tests bench hooks
echo "== mypy" && .venv/bin/mypy
echo "== lint-imports" && .venv/bin/lint-imports --no-cache
echo "== pytest: unit tests on Debian 12's python3-lxml, -pluggy, -libvirt and -tenacity"
.venv-debian/bin/python - <<'EOF'
import importlib, sys
for name in ("lxml", "pluggy", "tenacity", "libvirt"):
    where = importlib.import_module(name).__file__ or ""
    if not where.startswith("/usr/lib/python3/dist-packages/"):
        sys.exit(f"test: {name} is imported from {where}, not from Debian's python3-{name}")
EOF
# test_architecture.py checks the source tree (layers, cycles, sizes) with grimp, which
# is not a Debian package the .deb uses: once, in .venv, is enough.
.venv-debian/bin/python -m pytest -q -p no:cacheprovider tests/unit \
  --ignore=tests/unit/test_architecture.py
echo "== pytest"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
