"""Data layer: DigestPath reader, manifests, tiling, folds, label dropping, synthetic data."""
