#!/usr/bin/env python3
"""One command for the benchmark suite: `bench/run.sh` (installs tools) or `.venv/bin/python bench/run.py`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.suite.runner import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
