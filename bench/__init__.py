"""Benchmarks: ``python -m bench [section ...]`` (``make bench`` runs them all)."""
