"""Evaluation as DigestPath 2019 task 1: recall at IoU 0.3, normal-region FPs, FROC."""
