"""pathodet: signet ring cell detection in H&E images with partial annotation."""

import os

# Idle OpenMP threads sleep instead of spinning. Read once, when torch loads its OpenMP
# runtime, so it is set here, before any pathodet module imports torch. With spinning
# threads, two torch processes on a 2-core machine slow each other down 10x or more
# (docs/benchmarks/speed.md, "Two processes"). An explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
