"""Helpers every stage may use: atomic io, the config base, what this machine can do
(precision, threads), torchrun process groups and progress bars."""
