"""The auxiliary distance loss: zero for a perfect prediction, blind to rotations with CA atoms, not with N, CA, C."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from starmd.diffusion import SE3Diffuser
from starmd.geometry import Rigid, rotvec_to_rotmat
from starmd.geometry.backbone import IDEAL_LOCAL, RESNAMES
from starmd.training.config import TrainingConfig
from starmd.training.dataset import FrameWindowDataset, collate
from starmd.training.losses import compute_loss, target_times
from training_data import make_two_proteins


class FixedPrediction(torch.nn.Module):
    """Stands in for the network: returns a given x0 prediction (and any other outputs, e.g. a step law), so the
    loss itself is what is tested."""

    def __init__(self, pred: Rigid, **outputs: torch.Tensor) -> None:
        super().__init__()
        self.pred, self.outputs = pred, outputs

    def forward(self, *args, **kwargs) -> dict:
        return {"pred_rigids": self.pred, **self.outputs}


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> dict[str, torch.Tensor]:
    frames, features = make_two_proteins(tmp_path_factory.mktemp("proteins"))
    data = FrameWindowDataset(frames=frames, features=features, num_frames=2, strides=[1], crop_size=12,
                              centre="per_frame", seed=0)
    return {k: v.double() if v.is_floating_point() else v for k, v in collate([data[0], data[1]]).items()}


def _dist(batch: dict, pred: Rigid, atoms: str) -> float:
    cfg = TrainingConfig.from_dict({"dist_loss_weight": 1.0, "dist_loss_atoms": atoms, "dist_loss_t_max": 1.0})
    return float(compute_loss(FixedPrediction(pred), SE3Diffuser(), batch, cfg)["dist"])


def test_distance_loss_sees_rotations_only_through_backbone_atoms(batch):
    truth = Rigid(batch["rots"], batch["trans"])
    assert _dist(batch, truth, "ca") == 0 and _dist(batch, truth, "backbone") == 0
    # rotate every residue 30 degrees about its own CA: CA positions (and CA distances) stay exact
    turn = rotvec_to_rotmat(torch.tensor([0.0, 0.0, math.radians(30)], dtype=torch.float64))
    turned = Rigid(batch["rots"] @ turn, batch["trans"])
    assert _dist(batch, turned, "ca") == pytest.approx(0, abs=1e-12)
    assert _dist(batch, turned, "backbone") > 1e-4


def test_backbone_distance_loss_value(batch):
    """One window, one frame, by hand: N, CA, C from alanine's ideal geometry, pairs < 6 A in the truth, nm^2."""
    truth = Rigid(batch["rots"], batch["trans"])
    shifted = Rigid(batch["rots"], batch["trans"] * 1.1)  # stretch every distance by 10 %
    got = _dist(batch, shifted, "backbone")
    expected = []
    local = IDEAL_LOCAL[RESNAMES.index("ALA"), :2]
    for w in range(batch["rots"].shape[0]):
        per_frame = []
        n_res = int(batch["res_mask"][w].sum())
        for f in range(batch["rots"].shape[1]):
            def atoms(r: Rigid) -> np.ndarray:
                r = r[w, f, :n_res]
                return torch.stack([r.apply(local[0]), r.trans, r.apply(local[1])], dim=-2).reshape(-1, 3).numpy()
            a, b = atoms(truth), atoms(shifted)
            d_true = np.linalg.norm(a[:, None] - a[None], axis=-1)
            d_pred = np.linalg.norm(b[:, None] - b[None], axis=-1)
            keep = (d_true < 6.0) & ~np.eye(len(a), dtype=bool)
            per_frame.append(((d_pred - d_true)[keep] * 0.1) ** 2)
        expected.append(np.concatenate(per_frame).mean())
    assert got == pytest.approx(float(np.mean(expected)), rel=1e-9)


class Recorder(torch.nn.Module):
    """Wraps a real prediction: records what the loss hands the network (context frames and their tau)."""

    def __init__(self, pred: Rigid) -> None:
        super().__init__()
        self.pred, self.calls = pred, []

    def forward(self, single, pair, ctx, ctx_t, tgt, tgt_t, frame_time_ps, delta_t_ps, res_mask, window=None) -> dict:
        self.calls.append({"ctx": ctx, "ctx_t": ctx_t, "tgt_t": tgt_t})
        return {"pred_rigids": self.pred}


@pytest.mark.parametrize("tau_max", [0.0, 0.1])
def test_context_frames_are_noised_at_tau_and_tau_reaches_the_model(batch, tau_max):
    clean = Rigid(batch["rots"], batch["trans"])
    rec = Recorder(clean)
    compute_loss(rec, SE3Diffuser(), batch, TrainingConfig.from_dict({"tau_max": tau_max}))
    ctx, tau = rec.calls[0]["ctx"], rec.calls[0]["ctx_t"]
    assert tau.shape == batch["trans"].shape[:2] and float(tau.min()) >= 0 and float(tau.max()) <= tau_max
    moved = (ctx.trans - clean.trans).norm(dim=-1).mean(-1)  # [B, L] mean displacement per frame (A)
    if tau_max == 0:
        assert float(moved.max()) == 0 and float(tau.max()) == 0
    else:
        assert float(tau.max()) > 0
        # VP-SDE noise at tau: per-coordinate sigma = sqrt(1 - exp(-int beta)) / coordinate_scaling (A)
        integral = 0.1 * tau + 0.5 * (20.0 - 0.1) * tau**2
        sigma = torch.sqrt(1 - torch.exp(-integral)) / 0.1
        ratio = moved / (sigma * math.sqrt(8 / math.pi))  # mean |3-D Gaussian| = sigma sqrt(8 / pi)
        assert 0.6 < float(ratio.mean()) < 1.4


def test_context_window_reaches_the_model_and_rotation_threshold_drops_small_t(batch):
    clean = Rigid(batch["rots"], batch["trans"])
    rec = Recorder(clean)
    rec.forward = lambda *a, window=None: (rec.calls.append({"window": window}), {"pred_rigids": clean})[1]
    compute_loss(rec, SE3Diffuser(), batch, TrainingConfig.from_dict({"context_window": 1}))
    compute_loss(rec, SE3Diffuser(), batch, TrainingConfig.from_dict({}))
    assert [c["window"] for c in rec.calls] == [1, None]
    # a wrong rotation everywhere: the loss counts it only for targets above rot_loss_t_min
    turn = rotvec_to_rotmat(torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    wrong = FixedPrediction(Rigid(batch["rots"] @ turn, batch["trans"]))
    every = compute_loss(wrong, SE3Diffuser(), batch, TrainingConfig.from_dict({}))["rot"]
    above = compute_loss(wrong, SE3Diffuser(), batch, TrainingConfig.from_dict({"rot_loss_t_min": 0.99}))["rot"]
    assert float(every) > 0 and float(above) < float(every)


def test_activation_checkpointing_gives_the_same_loss_and_gradients(batch):
    """Recomputing every diffusion block in backward changes memory, not numbers: equal loss and gradients."""
    from starmd.model import StarMD
    from training_data import TINY_MODEL

    cfg = TrainingConfig.from_dict({"tau_max": 0.1})
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(3)
        model = StarMD(c_s_in=batch["single"].shape[-1], c_z_in=batch["pair"].shape[-1], **TINY_MODEL).double()
        model.activation_checkpointing = checkpointing
        torch.manual_seed(4)  # same noise draws
        loss = compute_loss(model, SE3Diffuser(), batch, cfg)["loss"]
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (loss0, grads0), (loss1, grads1) = results
    assert torch.equal(loss0, loss1) and float(loss0) > 0
    assert grads0.keys() == grads1.keys() and len(grads0) > 10
    for name in grads0:
        assert torch.allclose(grads0[name], grads1[name], rtol=1e-10, atol=1e-12), name


def test_collective_loss_charges_the_softest_modes_of_the_window(batch):
    """A prediction off along the window's softest ANM mode costs |amplitude|^2 (nm^2); one off along a stiff mode
    of the same size costs (almost) nothing; a perfect one costs 0."""
    from starmd.geometry.elastic import anm_modes

    cfg = TrainingConfig.from_dict({"collective_loss_weight": 2.0, "collective_modes": 4})
    truth = Rigid(batch["rots"], batch["trans"])
    modes = anm_modes(batch["trans"][:, 0], batch["res_mask"], 12)  # [B, 12, N, 3]
    perfect = compute_loss(FixedPrediction(truth), SE3Diffuser(), batch, cfg)
    assert float(perfect["collective"]) < 1e-20
    soft = Rigid(truth.rots, truth.trans + 3.0 * modes[:, None, 0])  # 3 A along mode 0 in every frame
    stiff = Rigid(truth.rots, truth.trans + 3.0 * modes[:, None, 11])
    out_soft = compute_loss(FixedPrediction(soft), SE3Diffuser(), batch, cfg)
    out_stiff = compute_loss(FixedPrediction(stiff), SE3Diffuser(), batch, cfg)
    assert float(out_soft["collective"]) == pytest.approx(0.3**2, rel=1e-6)  # 3 A = 0.3 nm
    assert float(out_stiff["collective"]) < 1e-12
    assert float(out_soft["trans"]) == pytest.approx(float(out_stiff["trans"]), rel=1e-6)  # trans loss: the same
    assert float(out_soft["loss"] - out_stiff["loss"]) == pytest.approx(2.0 * 0.3**2, rel=1e-6)


def test_log_uniform_target_times_use_the_same_draws_and_fill_small_t(batch):
    """t_sampling log_uniform maps the very draws of the uniform schedule u to t_min^(1 - u): the loss hands the
    network those times, and as many targets fall in [t_min, 10 t_min] as in [0.1, 1]."""
    clean = Rigid(batch["rots"], batch["trans"])
    rec = Recorder(clean)
    t_min = 1e-3
    compute_loss(rec, SE3Diffuser(), batch, TrainingConfig.from_dict({"t_min": t_min}))
    compute_loss(rec, SE3Diffuser(), batch, TrainingConfig.from_dict({"t_min": t_min, "t_sampling": "log_uniform"}))
    uniform, log_uniform = rec.calls[0]["tgt_t"], rec.calls[1]["tgt_t"]
    u = (uniform - t_min) / (1 - t_min)
    torch.testing.assert_close(log_uniform, t_min ** (1 - u))
    t = target_times(torch.rand(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64),
                     TrainingConfig.from_dict({"t_sampling": "log_uniform"}))  # t_min 0.01
    assert float(t.min()) >= 0.01 and float(t.max()) <= 1.0
    assert float((t < 0.1).double().mean()) == pytest.approx(0.5, abs=0.005)  # uniform: 0.09
    with pytest.raises(ValueError, match="training.t_sampling"):
        TrainingConfig.from_dict({"t_sampling": "cosine"})
