"""Whole slides: reading (OpenSlide), tissue detection, windowed detection, slide reports.

Stages, each a module: :mod:`~pathodet.predict.reader` opens a slide,
:mod:`~pathodet.predict.tissue` finds the tissue on an overview, :mod:`~pathodet.predict.plan`
lays the detector's windows over it, :mod:`~pathodet.predict.slide_windows` streams the windows
through a detector and merges in level-0 pixels, :mod:`~pathodet.predict.slide_report` turns the
detections into density and pictures, and :mod:`~pathodet.predict.slides` drives it all for
``pathodet predict`` (with torchrun sharing).
"""
