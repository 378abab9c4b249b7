"""Analyses of trained targets: per-layer empirical Fisher information (`fisher.py`)."""
