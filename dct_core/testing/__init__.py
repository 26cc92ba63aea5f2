"""Tiny random-weight models built in-process from configs, for the tests and the benchmarks (never used by the
product's code paths)."""
