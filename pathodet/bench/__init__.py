"""Benchmarks and figure scripts, run with ``pathodet bench ...`` (kept out of ``make test``)."""
