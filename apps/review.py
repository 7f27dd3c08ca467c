"""The review app from a checkout: ``streamlit run apps/review.py``.

The page itself is :mod:`pathodet.review.app`, inside the package, so that ``pathodet
review`` starts it from an installed wheel too. Streamlit re-runs this file on every
interaction, and each run executes the page afresh.
"""

import runpy

runpy.run_module("pathodet.review.app", run_name="__main__")
