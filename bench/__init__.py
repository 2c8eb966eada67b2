"""Benchmarks: each runs its baseline in the same run and reports the ratio."""
