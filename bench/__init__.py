"""Benchmarks (``s2loop bench ...``). May import anything; long measurements live here,
not in the tests."""
