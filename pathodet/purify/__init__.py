"""PU data purification (Guo et al., CVPR 2021): pick the pool tiles worth learning from.

``pathodet purify`` trains a tile classifier from positives (tiles holding annotated SRCs)
and an unlabeled pool (images or whole slides) with the non-negative PU risk, ranks the
pool, writes the selected tiles, and with a teacher detector pseudo-labels them; a student
then trains on labeled plus pseudo-labeled tiles with self-distillation
(``configs/pudet.yaml``). Modules: :mod:`.pool` (the unlabeled tiles), :mod:`.classifier`
(the PU classifier and the class prior), :mod:`.run` (the command).
"""
