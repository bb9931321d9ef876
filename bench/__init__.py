"""Benchmarks for plantprint: `make bench` (python -m bench)."""
