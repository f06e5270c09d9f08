"""atheris: arbitrary bytes on the hook's stdin for ``prepare begin``, under a policy of
each on-error value (the parity of the input's length picks one). The hook must never
raise, and its exit status must be the one the policy asks for.

    .venv/bin/python tests/fuzz/fuzz_hook.py [libFuzzer options] [CORPUS_DIR ...]
"""

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports(include=["memlock_guard"]):
    pass

from tests.fuzz.targets import HookHarness

if __name__ == "__main__":
    atheris.Setup(sys.argv, HookHarness())
    atheris.Fuzz()
