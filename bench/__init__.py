"""Benchmarks (``s2loop bench ...``). May import anything; long measurements live here,
not in the tests."""

from pathlib import Path

#: where the pages are written unless a command's ``--out`` says otherwise
BENCH_DIR = Path(__file__).resolve().parent
