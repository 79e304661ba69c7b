"""Benchmark harness: the engine measured against the raw JetStream loop it is built on.

Run with ``python bench/run.py [--quick]``; see docs/benchmarks.md.
"""
