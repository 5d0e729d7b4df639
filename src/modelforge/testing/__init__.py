"""Helpers for tests and benchmarks: facts and checkpoints built from the reference data."""
