"""``pathodet demo``: the whole pipeline on synthetic data, no download needed.

:func:`~pathodet.demo.run.run_demo` runs it; :class:`~pathodet.demo.settings.DemoSettings`
says what it runs (``make demo`` uses the defaults).
"""

from pathodet.demo.run import run_demo
from pathodet.demo.settings import DemoSettings

__all__ = ["DemoSettings", "run_demo"]
