"""Training and prediction loops (the training engine lands with the training issue)."""
