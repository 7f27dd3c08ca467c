"""Prediction: a checkpoint over images and whole slides (``pathodet predict``).

:func:`~pathodet.predict.pipeline.predict` is the one entry. It reads
:class:`~pathodet.predict.config.PredictConfig` and sends every input through one path in
:mod:`~pathodet.predict.windows`: lay the windows, detect, keep each window's core, merge.
Plain images are decoded whole (:mod:`~pathodet.predict.images`). Slides are opened with
OpenSlide (:mod:`~pathodet.predict.reader`); their tissue is found on an overview
(:mod:`~pathodet.predict.tissue`), the windows are laid over it
(:mod:`~pathodet.predict.plan`) and read one by one (:mod:`~pathodet.predict.slides`).
Each slide's report is drawn by :mod:`~pathodet.predict.slide_report`.
"""
