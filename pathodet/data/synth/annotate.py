"""Simulated partial annotation: which signet ring cells the pathologist boxed."""

from __future__ import annotations

import numpy as np


def keep_probabilities(
    annotate_rate: float, cluster_fraction: float, cluster_miss_ratio: float = 2.0
) -> tuple[float, float]:
    """Keep probabilities ``(scattered, clustered)`` giving an expected kept fraction of
    ``annotate_rate`` when ``cluster_fraction`` of the cells are in clusters and a clustered
    cell is missed ``cluster_miss_ratio`` times as often as a scattered one.

    With miss probabilities ``m_s`` and ``m_c = ratio * m_s``:
    ``f * m_c + (1 - f) * m_s = 1 - rate`` so ``m_s = (1 - rate) / (1 + f (ratio - 1))``.
    When that would make ``m_c > 1`` every clustered cell is missed and the scattered miss
    probability takes up the rest: ``m_s = (1 - rate - f) / (1 - f)``.
    """
    miss = 1.0 - annotate_rate
    f = float(np.clip(cluster_fraction, 0.0, 1.0))
    m_s = miss / (1.0 + f * (cluster_miss_ratio - 1.0))
    m_c = cluster_miss_ratio * m_s
    if m_c > 1.0:
        m_c = 1.0
        m_s = (miss - f) / (1.0 - f) if f < 1.0 else 0.0
    return 1.0 - float(np.clip(m_s, 0, 1)), 1.0 - float(np.clip(m_c, 0, 1))


def choose_annotated(
    rng: np.random.Generator,
    in_cluster: np.ndarray,
    annotate_rate: float,
    cluster_miss_ratio: float = 2.0,
) -> np.ndarray:
    """``(N,)`` bool mask of the SRCs a simulated pathologist annotated.

    Each cell is kept independently; clustered cells (``in_cluster``) are missed
    ``cluster_miss_ratio`` times as often as scattered ones, with the two probabilities
    solved (:func:`keep_probabilities`) so that the expected kept fraction equals
    ``annotate_rate`` given this image's cluster fraction. Like DigestPath, an image with
    cells and ``annotate_rate > 0`` always keeps at least one (a scattered one when there
    is one), which raises the kept fraction slightly for images with very few cells.

    Raises:
        ValueError: ``annotate_rate`` outside [0, 1] or a negative ``cluster_miss_ratio``.
    """
    if not 0.0 <= annotate_rate <= 1.0:
        raise ValueError(f"annotate_rate must be in [0, 1], got {annotate_rate}")
    if cluster_miss_ratio < 0:
        raise ValueError(f"cluster_miss_ratio must be >= 0, got {cluster_miss_ratio}")
    in_cluster = np.asarray(in_cluster, dtype=bool).reshape(-1)
    n = in_cluster.size
    if n == 0:
        return np.zeros(0, dtype=bool)
    keep_s, keep_c = keep_probabilities(annotate_rate, in_cluster.mean(), cluster_miss_ratio)
    u = rng.random(n)
    kept = u < np.where(in_cluster, keep_c, keep_s)
    if annotate_rate > 0 and not kept.any():
        pool = np.flatnonzero(~in_cluster)
        if pool.size == 0:
            pool = np.arange(n)
        kept[pool[int(rng.integers(0, pool.size))]] = True
    return kept
