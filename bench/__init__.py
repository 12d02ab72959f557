"""Benchmarks: numbers for docs/benchmarks.md, never pass/fail tests."""
