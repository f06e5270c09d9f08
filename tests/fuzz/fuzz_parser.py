"""atheris: arbitrary bytes as a domain XML, through parser, engine and both renderers.

    .venv/bin/python tests/fuzz/fuzz_parser.py [libFuzzer options] [CORPUS_DIR ...]

tests/fuzz/test_fuzz.py runs this for a bounded time; see tests/fuzz/README.md.
"""

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports(include=["memlock_guard"]):
    pass

from tests.fuzz.targets import parser_target

if __name__ == "__main__":
    atheris.Setup(sys.argv, parser_target)
    atheris.Fuzz()
