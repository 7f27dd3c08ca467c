"""Training: the run config, the loop, and the variants of its step.

:func:`~pathodet.training.train.train` runs a :class:`~pathodet.training.train.Trainer`:
AP:NP batches of augmented tiles, one optimiser step each through the run's
:class:`~pathodet.losses.criterion.Criterion`, validation, and checkpoints that resume
bit-exactly. The step has three variants. The plain one is in ``train.py``, co-mining in
:mod:`~pathodet.training.comining`, and self-distillation in
:mod:`~pathodet.training.distill`.
"""
