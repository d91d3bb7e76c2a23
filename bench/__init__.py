"""Benchmarks: SPEED against the raw git + docker commands, as ratios, written to results.json."""
