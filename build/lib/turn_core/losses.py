"""Generalized Cross Entropy (Zhang & Sabuncu, NeurIPS 2018), TURN's Phase-I loss."""
from __future__ import annotations


def gce_loss(logits, targets, q: float = 0.7):
    """Mean of (1 − p_y^q) / q over the batch.

    logits: (B, K) float tensor; targets: (B,) int64; q in (0, 1] (q → 0 recovers CE, q = 1 is
    MAE). Robust to noisy labels because the gradient of a low-p_y sample is down-weighted by p_y^q.
    """
    import torch

    p_y = torch.softmax(logits.float(), dim=1).gather(1, targets[:, None]).squeeze(1)
    return ((1.0 - p_y.clamp_min(1e-7) ** q) / q).mean()
