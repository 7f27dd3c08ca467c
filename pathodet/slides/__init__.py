"""Whole slides: reading (OpenSlide), tissue detection, windowed detection, slide reports.

Stages, each a module: :mod:`~pathodet.slides.reader` opens a slide,
:mod:`~pathodet.slides.tissue` finds the tissue on an overview, :mod:`~pathodet.slides.plan`
lays the detector's windows over it, :mod:`~pathodet.slides.detect` streams the windows
through a detector and merges in level-0 pixels, :mod:`~pathodet.slides.report` turns the
detections into density and pictures, and :mod:`~pathodet.slides.run` drives it all for
``pathodet predict`` (with torchrun sharing).
"""
