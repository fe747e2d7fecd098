"""Named Linear inits, the fp32 geometry guard and the scalar embeddings of starmd.model."""

from __future__ import annotations

import pytest
import torch

from starmd.model.embeddings import diffusion_time_embedding, log_time_embedding, rbf, sinusoidal_embedding
from starmd.model.primitives import Linear, full_precision, geometry_dtype


def test_linear_inits_follow_openfold_conventions():
    torch.manual_seed(0)
    final, gating = Linear(64, 32, init="final"), Linear(64, 32, init="gating")
    assert torch.count_nonzero(final.weight) == 0 and torch.count_nonzero(final.bias) == 0
    assert torch.count_nonzero(gating.weight) == 0 and torch.all(gating.bias == 1)
    default, relu = Linear(400, 300), Linear(400, 300, init="relu")
    # LeCun / He fan-in variances (the truncation correction restores the nominal std).
    assert default.weight.std().item() == pytest.approx((1 / 400) ** 0.5, rel=0.05)
    assert relu.weight.std().item() == pytest.approx((2 / 400) ** 0.5, rel=0.05)
    assert default.weight.abs().max() <= 2 * (1 / 400) ** 0.5 / 0.8796 + 1e-6
    assert torch.count_nonzero(default.bias) == 0
    glorot = Linear(400, 300, init="glorot")
    assert glorot.weight.abs().max() <= (6 / 700) ** 0.5
    with pytest.raises(ValueError, match="init must be one of"):
        Linear(3, 3, init="lecun")


def test_geometry_runs_in_fp32_under_autocast():
    assert geometry_dtype(torch.bfloat16) == torch.float32 and geometry_dtype(torch.float64) == torch.float64
    a = torch.randn(4, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16
        with full_precision(a.device):
            assert (a @ a).dtype == torch.float32


def test_time_embeddings_are_continuous_and_separate_strides():
    dt = torch.tensor([10.0, 11.0, 100.0, 10_000.0], dtype=torch.float64)
    e = log_time_embedding(dt, 16)
    assert e.shape == (4, 16) and torch.allclose(e.norm(dim=-1), torch.full((4,), 8.0, dtype=torch.float64) ** 0.5)
    gaps = torch.cdist(e, e)
    assert gaps[0, 1] > 1e-2 and gaps[0, 2] > 5 * gaps[0, 1]  # a 10 % change is visible, a decade far more
    # An unseen stride (continuous, not a lookup) lies between its neighbours.
    mid = log_time_embedding(torch.tensor([10.5], dtype=torch.float64), 16)
    assert torch.cdist(mid, e[:2]).max() < gaps[0, 1]
    t = diffusion_time_embedding(torch.tensor([0.0, 0.5, 1.0]), 32)
    assert t.shape == (3, 32) and torch.all(t[0, :16] == 0) and torch.all(t[0, 16:] == 1)
    with pytest.raises(ValueError, match="even"):
        sinusoidal_embedding(torch.zeros(2), 7)


def test_rbf_peaks_at_its_centre():
    r = rbf(torch.tensor([0.0, 10.0, 20.0]), 5, 20.0)
    assert r.shape == (3, 5)
    assert r.argmax(-1).tolist() == [0, 2, 4] and torch.allclose(r.max(-1).values, torch.ones(3))
