"""Benchmarks: each prints one JSON object. Run from the repository root."""
