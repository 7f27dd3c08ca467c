"""Synthetic DigestPath-like H&E images with signet ring cells and partial annotation.

Public API:

* :class:`SynthImage` and :func:`synthesize_image`: one rendered image with the boxes of
  every signet ring cell (SRC) and of the hard negatives drawn;
* :func:`choose_annotated`: which SRCs a simulated pathologist boxed (clustered cells are
  missed more often);
* :func:`write_synthetic_dataset`: a whole dataset in the DigestPath 2019 folder layout.
"""

from pathodet.data.synth.annotate import choose_annotated, keep_probabilities
from pathodet.data.synth.compose import SynthImage, synthesize_image
from pathodet.data.synth.dataset import write_synthetic_dataset
from pathodet.data.synth.stain import jpeg_roundtrip

__all__ = [
    "SynthImage",
    "choose_annotated",
    "jpeg_roundtrip",
    "keep_probabilities",
    "synthesize_image",
    "write_synthetic_dataset",
]
