"""The pathologists' review loop: cases to review, decisions in SQLite, export to training data.

:mod:`~pathodet.review.cases` finds what to review (safely, under the served roots),
:mod:`~pathodet.review.store` records decisions, :mod:`~pathodet.review.logic` and
:mod:`~pathodet.review.view` compute and draw what :mod:`~pathodet.review.app` shows, and
:mod:`~pathodet.review.export` turns decisions into a DigestPath root for ``pathodet train``.
"""
