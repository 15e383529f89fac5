"""GCE loss (turn_core.losses): its value and gradient against CE."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from turn_core.losses import gce_loss


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    return None

# ------------------------------------------------------------------------------------ GCE
def _logits(b=6, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, generator=g) * 2.0, torch.randint(0, k, (b,), generator=g)


def test_gce_q1_is_mae_like_one_minus_p_y():
    z, y = _logits()
    p_y = torch.softmax(z, 1)[torch.arange(len(y)), y]
    assert torch.allclose(gce_loss(z, y, q=1.0), (1 - p_y).mean(), atol=1e-6)


def test_gce_small_q_approaches_ce():
    z, y = _logits(b=8, k=5, seed=1)
    ce = F.cross_entropy(z, y)
    errs = [abs(float(gce_loss(z, y, q=q) - ce)) for q in (0.5, 0.1, 1e-3)]
    assert errs[0] > errs[1] > errs[2]          # monotone approach
    assert errs[2] < 1e-2 * float(ce) + 1e-3    # and close at q → 0


@pytest.mark.parametrize("q", [0.3, 0.7, 1.0])
def test_gce_gradient_is_ce_gradient_scaled_by_p_y_to_the_q(q):
    # d/dz (1 − p^q)/q = p^q · d/dz(−log p): low-p_y (likely mislabeled) samples are down-weighted.
    z = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 3.0]], requires_grad=True)  # sample 0 confident, 1 not
    y = torch.tensor([0, 0])
    gce_loss(z, y, q=q).backward()
    g_gce = z.grad.clone()
    z.grad = None
    F.cross_entropy(z, y).backward()
    g_ce = z.grad.clone()
    p_y = torch.softmax(z.detach(), 1)[torch.arange(2), y]
    assert torch.allclose(g_gce, g_ce * p_y[:, None] ** q, atol=1e-6)
    ratio = g_gce.norm(dim=1) / g_ce.norm(dim=1)
    assert ratio[1] < ratio[0]                  # the low-p_y sample gets relatively less gradient


def test_gce_gradient_of_low_p_y_sample_is_smaller_than_under_ce():
    z = torch.tensor([[-3.0, 3.0]], requires_grad=True)
    y = torch.tensor([0])
    gce_loss(z, y, q=0.7).backward()
    g = z.grad.norm().item()
    z.grad = None
    F.cross_entropy(z, y).backward()
    assert g < 0.05 * z.grad.norm().item()
