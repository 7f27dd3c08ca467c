"""``pathodet demo``: the whole pipeline on synthetic data, no download needed.

:func:`~pathodet.demo.synthetic.run_demo` runs it; :class:`~pathodet.demo.settings.DemoSettings`
says what it runs (``make demo`` uses the defaults).
"""

from pathodet.demo.settings import DemoSettings
from pathodet.demo.synthetic import run_demo

__all__ = ["DemoSettings", "run_demo"]
