"""Helpers every stage may use: what this machine can do (precision, threads)."""
