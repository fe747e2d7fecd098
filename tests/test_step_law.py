"""The denoiser with a learned step width (`model.step_std_init`) and the ancestral reverse step (`rollout.reverse`).

With a Gaussian next-frame law the posterior mean is the exact denoiser, and the ancestral sampler fed with it (and
its variance) draws the law's exact width at any number of steps: what issue 13's narrow rollouts need. Checked
against Monte-Carlo draws of the forward process, through the rollout's own `denoise_frame`, through the loss and
through the network's cache path.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from starmd.diffusion import SE3Diffuser
from starmd.geometry import Rigid, random_rotation, rotmat_to_rotvec, rotvec_to_rotmat
from starmd.geometry.elastic import anm_hessian
from starmd.model.network import StarMD, model_hparams
from starmd.rollout.config import RolloutConfig
from starmd.rollout.sampler import denoise_frame
from starmd.training.config import TrainingConfig
from starmd.training.losses import compute_loss
from test_model_network import C_S_IN, C_Z_IN, TINY, inputs, tiny_model
from test_training_losses import FixedPrediction, batch  # noqa: F401  (module fixture)

F64 = torch.float64


@pytest.fixture(scope="module")
def diffuser() -> SE3Diffuser:
    return SE3Diffuser()


def _gaussian_frames(n_draws: int, n: int, s: torch.Tensor, r: float, g: torch.Generator) -> tuple[Rigid, Rigid]:
    """A fixed mean M [N] and n_draws clean frames x0 = M + s eps (A), R0 = M exp(r z)."""
    mean = Rigid(random_rotation((n,), g, dtype=F64), 5.0 * torch.randn(n, 3, generator=g, dtype=F64))
    trans = mean.trans + s[:, None] * torch.randn(n_draws, n, 3, generator=g, dtype=F64)
    rots = mean.rots @ rotvec_to_rotmat(r * torch.randn(n_draws, n, 3, generator=g, dtype=F64))
    return mean.expand(n_draws, n), Rigid(rots, trans)


@pytest.mark.parametrize("t", [0.005, 0.05, 0.3])
def test_posterior_mean_is_the_conditional_expectation_for_gaussian_frames(diffuser, t):
    """x0 - E[x0 | x_t] is uncorrelated with x_t and has the variance `posterior_var` says (translations exactly,
    rotations in the small-angle regime the law is meant for)."""
    g = torch.Generator().manual_seed(0)
    n, draws = 6, 40_000
    s = torch.tensor([0.1, 0.2, 0.3, 0.5, 0.8, 1.2], dtype=F64)
    r = 0.05
    mean, x0 = _gaussian_frames(draws, n, s, r, g)
    noisy = diffuser.forward_marginal(x0, t, g)["rigids_t"]
    log_std = torch.stack([s.log(), torch.full((n,), math.log(r), dtype=F64)], -1).expand(draws, n, 2)
    est = diffuser.posterior_mean(mean, log_std, noisy, t)
    var_trans, var_rot = (v[0] for v in diffuser.posterior_var(log_std, t))  # [N] each

    resid = x0.trans - est.trans  # [D, N, 3]
    centred_xt = noisy.trans - noisy.trans.mean(0)
    corr = (resid * centred_xt).mean(0) / (resid.std(0) * centred_xt.std(0))
    assert corr.abs().max() < 0.03  # 4 sigma of a zero correlation over 40k draws
    torch.testing.assert_close(resid.var(0).mean(-1), var_trans, rtol=0.04, atol=0)

    rot_resid = rotmat_to_rotvec(est.rots.transpose(-1, -2) @ x0.rots)  # [D, N, 3] body frame
    torch.testing.assert_close(rot_resid.pow(2).mean((0, 2)), var_rot, rtol=0.06, atol=0)


@pytest.mark.parametrize("t", [0.01, 0.1])
def test_posterior_mean_with_collective_modes_is_the_conditional_expectation(diffuser, t):
    """Translations correlated along the chain (diag(s^2) + U U^T): the residual is uncorrelated with x_t and its
    covariance across residues is `posterior_var`'s matrix; the diagonal law would leave correlation behind."""
    g = torch.Generator().manual_seed(4)
    n, draws = 6, 60_000
    s = torch.full((n,), 0.1, dtype=F64)
    modes = torch.tensor([[0.3], [0.35], [0.4], [0.4], [0.35], [0.3]], dtype=F64)  # one collective mode (A)
    mean = Rigid(random_rotation((n,), g, dtype=F64), 5.0 * torch.randn(n, 3, generator=g, dtype=F64))
    eps = s[:, None] * torch.randn(draws, n, 3, generator=g, dtype=F64)
    trans = mean.trans + eps + modes[None] @ torch.randn(draws, 1, 3, generator=g, dtype=F64)
    x0 = Rigid(mean.rots.expand(draws, n, 3, 3), trans)
    noisy = diffuser.forward_marginal(x0, t, g)["rigids_t"]
    log_std = torch.stack([s.log(), torch.full((n,), math.log(0.05), dtype=F64)], -1).expand(draws, n, 2)
    u = modes.expand(draws, n, 1)
    est = diffuser.posterior_mean(mean.expand(draws, n), log_std, noisy, t, u)
    resid = x0.trans - est.trans  # [D, N, 3]
    xt = noisy.trans - noisy.trans.mean(0)
    cross = torch.einsum("dic,djc->ij", resid, xt) / (draws * 3)  # E[resid_i x_t,j]
    scale = resid.std() * xt.std()
    assert (cross / scale).abs().max() < 0.02
    cov = torch.einsum("dic,djc->ij", resid, resid) / (draws * 3)
    expected = diffuser.posterior_var(log_std[:1], t, u[:1])[0][0]
    torch.testing.assert_close(cov, expected, rtol=0, atol=0.06 * expected.diag().max().item())
    diagonal = diffuser.posterior_mean(mean.expand(draws, n), log_std, noisy, t)  # ignores the modes
    diag_cross = torch.einsum("dic,djc->ij", x0.trans - diagonal.trans, xt) / (draws * 3)
    assert (diag_cross / scale).abs().max() > 0.05


def _elastic_precision(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A chain of n points 3.8 A apart (bent at random) and its elastic law: precision 1/s^2 I + kappa H [3N, 3N]."""
    steps = torch.nn.functional.normalize(torch.randn(n - 1, 3, generator=g, dtype=F64) + torch.tensor([3.0, 0, 0],
                                          dtype=F64), dim=-1)
    xyz = torch.cat([torch.zeros(1, 3, dtype=F64), 3.8 * steps.cumsum(0)])
    springs = (torch.cdist(xyz, xyz) < 8.0).to(F64)
    return xyz, torch.eye(3 * n, dtype=F64) / 0.3**2 + 50.0 * anm_hessian(xyz, springs)


@pytest.mark.parametrize("t", [0.01, 0.1])
def test_posterior_mean_with_an_elastic_precision_is_the_conditional_expectation(diffuser, t):
    """A law given by its precision over all 3N coordinates (`model.step_elastic`): the residual is uncorrelated
    with x_t and its covariance is `posterior_var`'s [3N, 3N] matrix."""
    g = torch.Generator().manual_seed(6)
    n, draws = 5, 60_000
    xyz, precision = _elastic_precision(n, g)
    chol = torch.linalg.cholesky(torch.linalg.inv(precision))
    x0 = Rigid(random_rotation((n,), g, dtype=F64).expand(draws, n, 3, 3),
               xyz + (chol @ torch.randn(draws, 3 * n, 1, generator=g, dtype=F64))[..., 0].unflatten(-1, (n, 3)))
    noisy = diffuser.forward_marginal(x0, t, g)["rigids_t"]
    log_std = torch.full((draws, n, 2), math.log(0.3), dtype=F64)
    mean = Rigid(x0.rots, xyz.expand(draws, n, 3))
    est = diffuser.posterior_mean(mean, log_std, noisy, t, precision=precision.expand(draws, 3 * n, 3 * n))
    resid = (x0.trans - est.trans).flatten(-2)  # [D, 3N]
    xt = (noisy.trans - noisy.trans.mean(0)).flatten(-2)
    cross = resid.T @ xt / draws
    assert (cross / (resid.std() * xt.std())).abs().max() < 0.02
    expected = diffuser.posterior_var(log_std[:1], t, precision=precision[None])[0][0]
    torch.testing.assert_close(resid.T @ resid / draws, expected, rtol=0, atol=0.05 * expected.diag().max().item())


def test_x0_law_shares_one_factorisation_and_matches_the_dense_solution(diffuser):
    """The sampler's `x0_law` (one Cholesky factor for mean and covariance) equals the textbook formulas
    x0 = m + (P + alpha^2/v I)^-1 alpha/v (x_t - alpha m) and Var = (P + alpha^2/v I)^-1, and `x0_estimate`."""
    g = torch.Generator().manual_seed(8)
    n, t = 5, 0.2
    xyz, precision = _elastic_precision(n, g)
    mean = Rigid(random_rotation((2, n), g, dtype=F64), xyz.expand(2, n, 3))
    noisy = diffuser.forward_marginal(mean, t, g)["rigids_t"]
    log_std = torch.full((2, n, 2), math.log(0.3), dtype=F64)
    out = {"pred_rigids": mean, "step_log_std": log_std, "step_precision": precision.expand(2, 3 * n, 3 * n)}
    x0, (var_trans, var_rot) = diffuser.x0_law(out, noisy, t)
    alpha = diffuser.r3.alpha_t(torch.tensor(t, dtype=F64))
    v = diffuser.r3.conditional_var(torch.tensor(t, dtype=F64)) / diffuser.r3.coordinate_scaling**2
    dense = torch.linalg.inv(precision + alpha**2 / v * torch.eye(3 * n, dtype=F64))
    expected = xyz + (dense @ (alpha / v * (noisy.trans - alpha * xyz).flatten(-2))[..., None])[..., 0].unflatten(
        -1, (n, 3))
    torch.testing.assert_close(x0.trans, expected)
    torch.testing.assert_close(var_trans, dense.expand(2, 3 * n, 3 * n))
    torch.testing.assert_close(x0.trans, diffuser.x0_estimate(out, noisy, t).trans)
    torch.testing.assert_close(var_rot, diffuser.posterior_var(log_std, t)[1])
    plain, none = diffuser.x0_law({"pred_rigids": mean}, noisy, t)
    assert plain is mean and none is None  # no law predicted: the prediction, and no variance


def test_posterior_mean_limits(diffuser):
    """Near t = 0 the estimate is the noisy frame itself; at t = 1 it is the network's mean."""
    g = torch.Generator().manual_seed(1)
    mean, x0 = _gaussian_frames(4, 5, torch.full((5,), 0.3, dtype=F64), 0.1, g)
    log_std = torch.tensor([math.log(0.3), math.log(0.1)], dtype=F64).expand(4, 5, 2)
    tiny = diffuser.posterior_mean(mean, log_std, x0, 1e-7)
    assert (tiny.trans - x0.trans).abs().max() < 1e-4 and (tiny.rots - x0.rots).abs().max() < 1e-3
    noisy = diffuser.forward_marginal(x0, 1.0, g)["rigids_t"]
    far = diffuser.posterior_mean(mean, log_std, noisy, 1.0)
    assert (far.trans - mean.trans).abs().max() < 1e-3 and (far.rots - mean.rots).abs().max() < 0.05
    out = {"pred_rigids": mean}
    assert diffuser.x0_estimate(out, noisy, 0.5) is mean  # no width predicted: x0 is the prediction


class ExactGaussian:
    """The exact denoiser of a known next-frame law N(mean, s^2 I + U U^T) x IGSO3-like(r), as a rollout context."""

    def __init__(self, mean: Rigid, s: float, r: float | None, modes: torch.Tensor | None = None,
                 precision: torch.Tensor | None = None) -> None:
        self.mean, self.s, self.r, self.modes, self.precision = mean, s, r, modes, precision

    def denoise(self, frame: Rigid, t: torch.Tensor, frame_time_ps: torch.Tensor) -> dict:
        if self.r is None:
            return {"pred_rigids": self.mean}
        b, n = self.mean.shape
        log_std = torch.tensor([math.log(self.s), math.log(self.r)], dtype=self.mean.dtype).expand(b, n, 2)
        out = {"pred_rigids": self.mean, "step_log_std": log_std}
        if self.modes is not None:
            out["step_modes"] = self.modes.expand(b, *self.modes.shape)
        if self.precision is not None:
            out["step_precision"] = self.precision.expand(b, *self.precision.shape)
        return out


@pytest.mark.parametrize("steps", [3, 20])
def test_ancestral_sampler_draws_the_exact_width_from_an_exact_denoiser(diffuser, steps):
    """Through the rollout's denoise_frame: sampled frames have the law's mean and width (translation std x
    sqrt(1 - 1/N) for the centring), whatever the number of reverse steps."""
    g = torch.Generator().manual_seed(2)
    b, n, s, r = 400, 10, 0.2, 0.1
    mean = Rigid(random_rotation((b, n), g, dtype=F64), 3.0 * torch.randn(b, n, 3, generator=g, dtype=F64))
    cfg = RolloutConfig(steps=steps, t_min=0.01, reverse="ancestral")
    out = denoise_frame(ExactGaussian(mean, s, r), diffuser, 100.0, (b, n), cfg, g, F64, torch.device("cpu"),
                        contextlib.nullcontext)
    dx = out.trans - (mean.trans - mean.trans.mean(-2, keepdim=True))
    assert dx.mean().abs() < 0.01
    assert dx.std().item() / s == pytest.approx(math.sqrt(1 - 1 / n), rel=0.03)
    w = rotmat_to_rotvec(mean.rots.transpose(-1, -2) @ out.rots)
    assert w.std().item() / r == pytest.approx(1.0, rel=0.04)


def test_ancestral_sampler_draws_correlated_steps_from_an_exact_denoiser_with_modes(diffuser):
    """With a collective mode, sampled frames carry its covariance across residues (the chain moves together)."""
    g = torch.Generator().manual_seed(5)
    b, n, s, r = 2000, 6, 0.05, 0.1
    modes = torch.tensor([[0.3], [0.35], [0.4], [-0.4], [-0.35], [-0.3]], dtype=F64)  # zero mean: centring keeps it
    mean = Rigid(random_rotation((n,), g, dtype=F64).expand(b, n, 3, 3), torch.zeros(b, n, 3, dtype=F64))
    cfg = RolloutConfig(steps=10, t_min=0.01, reverse="ancestral")
    out = denoise_frame(ExactGaussian(mean, s, r, modes), diffuser, 100.0, (b, n), cfg, g, F64,
                        torch.device("cpu"), contextlib.nullcontext)
    cov = torch.einsum("dic,djc->ij", out.trans, out.trans) / (b * 3)
    centre = torch.eye(n, dtype=F64) - 1 / n
    expected = centre @ (s**2 * torch.eye(n, dtype=F64) + modes @ modes.T) @ centre
    torch.testing.assert_close(cov, expected, rtol=0, atol=0.1 * expected.diag().max().item())


def test_ancestral_sampler_draws_the_elastic_law_from_an_exact_denoiser(diffuser):
    """With an elastic precision the sampled frames carry its [3N, 3N] covariance: bonds stay stiff, the chain bends."""
    g = torch.Generator().manual_seed(7)
    b, n = 3000, 5
    xyz, precision = _elastic_precision(n, g)
    xyz = xyz - xyz.mean(0)
    mean = Rigid(random_rotation((n,), g, dtype=F64).expand(b, n, 3, 3), xyz.expand(b, n, 3))
    cfg = RolloutConfig(steps=10, t_min=0.01, reverse="ancestral")
    out = denoise_frame(ExactGaussian(mean, 0.3, 0.1, precision=precision), diffuser, 100.0, (b, n), cfg, g, F64,
                        torch.device("cpu"), contextlib.nullcontext)
    dx = (out.trans - xyz).flatten(-2)  # [B, 3N]
    centre = torch.kron(torch.eye(n, dtype=F64) - 1 / n, torch.eye(3, dtype=F64))
    expected = centre @ torch.linalg.inv(precision) @ centre
    torch.testing.assert_close(dx.T @ dx / b, expected, rtol=0, atol=0.08 * expected.diag().max().item())
    bond = (out.trans[:, 1:] - out.trans[:, :-1]).norm(dim=-1)  # CA-CA distances stay near 3.8 A
    assert bond.std(0).max() < 0.5 * 0.3 * math.sqrt(2)  # well under independent 0.3 A jitter of both ends


def test_ancestral_sampler_ends_on_the_prediction_when_no_width_is_known(diffuser):
    """A network without step_std_init: the last ancestral draw is its x0 prediction (centred), as with Euler."""
    g = torch.Generator().manual_seed(3)
    b, n = 3, 7
    mean = Rigid(random_rotation((b, n), g, dtype=F64), 3.0 * torch.randn(b, n, 3, generator=g, dtype=F64))
    ends = [denoise_frame(ExactGaussian(mean, 0.0, None), diffuser, 100.0, (b, n),
                          RolloutConfig(steps=5, reverse=rev), g, F64, torch.device("cpu"), contextlib.nullcontext)
            for rev in ("ancestral", "euler")]
    for end in ends:
        torch.testing.assert_close(end.trans, mean.trans - mean.trans.mean(-2, keepdim=True))
        torch.testing.assert_close(end.rots, mean.rots)


def test_ancestral_step_checks_its_times(diffuser):
    x = Rigid(random_rotation((2, 3), dtype=F64), torch.zeros(2, 3, 3, dtype=F64))
    with pytest.raises(ValueError, match="earlier time"):
        diffuser.reverse_ancestral(x, x, 0.3, 0.5, None)
    with pytest.raises(ValueError, match="reverse must be"):
        RolloutConfig(reverse="heun")


def test_loss_charges_the_posterior_mean(diffuser, batch):  # noqa: F811
    """With a width, the loss scores the posterior mean, not the raw prediction: the true frames predicted with
    a tiny width cost ~0, with a large width (x0 then follows the noisy target) they do not."""
    truth = Rigid(batch["rots"], batch["trans"])
    cfg = TrainingConfig.from_dict({"dist_loss_weight": 0.0, "tau_max": 0.05})
    losses = {}
    for width in (1e-4, 5.0):
        net = FixedPrediction(truth, step_log_std=torch.full((*truth.shape, 2), math.log(width), dtype=F64))
        losses[width] = compute_loss(net, diffuser, batch, cfg)
    assert losses[1e-4]["trans"] < 1e-6 and losses[1e-4]["rot"] < 1e-3
    assert losses[5.0]["trans"] > 1e-3
    # the distance loss charges the estimate (which follows the noisy target) or, with dist_loss_on: mean, the
    # network's own prediction (here the truth: no distance error, whatever the width)
    wide = FixedPrediction(truth, step_log_std=torch.full((*truth.shape, 2), math.log(5.0), dtype=F64))
    charged = {on: compute_loss(wide, diffuser, batch, TrainingConfig.from_dict(
        {"dist_loss_weight": 1.0, "dist_loss_t_max": 1.0, "dist_loss_on": on}))["dist"] for on in ("estimate", "mean")}
    assert charged["estimate"] > 1e-4 and charged["mean"] < 1e-12
    with pytest.raises(ValueError, match="dist_loss_on"):
        TrainingConfig.from_dict({"dist_loss_on": "prediction"})


def test_elastic_precision_has_contact_and_bond_springs():
    """`step_elastic`'s precision from predicted CA positions: diagonal 1/s^2 per coordinate, block (i, j) -k e e^T
    with k = bond stiffness (chain neighbours) + contact stiffness x sigmoid(cutoff - d), nothing to padding."""
    model = StarMD(c_s_in=C_S_IN, c_z_in=C_Z_IN, **TINY, step_std_init=[0.3, 0.05], step_elastic=[5.0, 2.0, 40.0])
    model = model.to(F64)  # as built: the stiffnesses are their initial values
    ca = torch.tensor([[0.0, 0, 0], [3.8, 0, 0], [7.6, 0, 0], [7.6, 3.8, 0]], dtype=F64)[None]  # [1, 4, 3]
    log_std = torch.full((1, 4, 2), math.log(0.5), dtype=F64)
    res_mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=F64)  # residue 3 is padding
    blocks = model._step_precision(ca, log_std, res_mask)[0].unflatten(-1, (4, 3)).unflatten(0, (4, 3))
    e = torch.tensor([1.0, 0, 0], dtype=F64)
    contact = 2.0 * torch.sigmoid(torch.tensor(5.0 - 3.8, dtype=F64))
    torch.testing.assert_close(blocks[0, :, 1], -(40.0 + contact) * torch.outer(e, e))
    far = 2.0 * torch.sigmoid(torch.tensor(5.0 - 7.6, dtype=F64))  # residues 0 and 2: contact spring only
    torch.testing.assert_close(blocks[0, :, 2], -far * torch.outer(e, e))
    assert blocks[2, :, 3].abs().max() == 0 and blocks[3, :, 2].abs().max() == 0
    torch.testing.assert_close(blocks[3, :, 3], torch.eye(3, dtype=F64) / 0.25)
    diag = blocks[0, :, 0]
    torch.testing.assert_close(diag, torch.eye(3, dtype=F64) / 0.25 + (40.0 + contact + far) * torch.outer(e, e))


def test_network_predicts_the_width_consistently_in_training_and_rollout():
    """step_log_std starts at log(step_std_init), is [B, L, N, 2], depends on the input once trained (perturbed
    weights), and the cached rollout step gives the full forward's value for target l."""
    model = tiny_model(step_std_init=[0.3, 0.05])
    x = inputs()
    full = model(**x)["step_log_std"]
    assert full.shape == (2, 3, 5, 2) and full.std() > 0
    cache = model.init_cache(x["single"], x["pair"], x["res_mask"], x["delta_t_ps"])
    for l in range(3):
        step = model.step(cache, x["tgt"][:, l], x["tgt_t"][:, l], x["frame_time_ps"][:, l])["step_log_std"]
        torch.testing.assert_close(step[x["res_mask"].bool()], full[:, l][x["res_mask"].bool()], rtol=0, atol=1e-10)
        model.append(cache, x["ctx"][:, l], x["ctx_t"][:, l], x["frame_time_ps"][:, l])
    fresh = StarMD(c_s_in=C_S_IN, c_z_in=C_Z_IN, **TINY, step_std_init=[0.3, 0.05]).to(F64)  # as built
    start = fresh(**x)["step_log_std"]
    torch.testing.assert_close(start, torch.tensor([math.log(0.3), math.log(0.05)], dtype=F64).expand_as(start))
    assert "step_log_std" not in tiny_model()(**x)
    with_modes = tiny_model(step_std_init=[0.3, 0.05], step_modes=3)
    full = with_modes(**x)["step_modes"]
    assert full.shape == (2, 3, 5, 3) and full[1, :, 0].abs().max() == 0 and full[0].abs().min() > 0  # padding: 0
    cache = with_modes.init_cache(x["single"], x["pair"], x["res_mask"], x["delta_t_ps"])
    step = with_modes.step(cache, x["tgt"][:, 0], x["tgt_t"][:, 0], x["frame_time_ps"][:, 0])["step_modes"]
    torch.testing.assert_close(step, full[:, 0], rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="step_modes"):
        tiny_model(step_modes=2)
    elastic = tiny_model(step_std_init=[0.3, 0.05], step_elastic=[8.0, 20.0, 200.0])
    full = elastic(**x)["step_precision"]  # [B, L, 3N, 3N]
    assert full.shape == (2, 3, 15, 15)
    torch.testing.assert_close(full, full.transpose(-1, -2))
    assert torch.linalg.eigvalsh(full).min() > 0
    padded = full[1].unflatten(-1, (5, 3)).unflatten(-3, (5, 3))[:, 0, :, 1:]  # residue 0 of protein 1 is padding
    assert padded.abs().max() == 0  # no spring to a padded residue
    cache = elastic.init_cache(x["single"], x["pair"], x["res_mask"], x["delta_t_ps"])
    step = elastic.step(cache, x["tgt"][:, 0], x["tgt_t"][:, 0], x["frame_time_ps"][:, 0])["step_precision"]
    torch.testing.assert_close(step[0], full[0, 0], rtol=0, atol=1e-8)
    with pytest.raises(ValueError, match="step_elastic"):
        tiny_model(step_elastic=[8.0, 20.0, 200.0])
    with pytest.raises(ValueError, match="step_std_init"):
        tiny_model(step_std_init=[0.3])
    assert model_hparams({"step_std_init": [0.3, 0.05]})["step_std_init"] == [0.3, 0.05]


def _helix_frames() -> tuple[Rigid, torch.Tensor]:
    """Backbone frames [N] (A) of a real all-atom helix (PeptideBuilder) and its alanine-like aatype [N]."""
    from eval_inputs import helix_topology_traj

    traj = helix_topology_traj()
    xyz = torch.as_tensor(traj.xyz[0] * 10.0, dtype=F64)
    pick = {name: [a.index for a in traj.topology.atoms if a.name == name] for name in ("N", "CA", "C")}
    frames = Rigid.from_3_points(xyz[pick["N"]], xyz[pick["CA"]], xyz[pick["C"]])
    return frames, torch.zeros(frames.shape[0], dtype=torch.long)


def test_chain_transport_keeps_the_peptide_bond_when_the_elastic_law_bends_the_chain(diffuser):
    """The elastic law bends the CA trace (CA-CA stays stiff); drawn with independent rotations the frames do not
    follow, and the peptide bond C(i)-N(i+1) spreads (0.13 A RMS here, MD ~0.04 A). With `rollout.chain_transport`
    each frame turns with its local trace and the spread is less than half (0.05 A)."""
    from starmd.geometry.backbone import backbone_atoms

    frames, aatype = _helix_frames()
    n, b = frames.shape[0], 200
    ca = frames.trans - frames.trans.mean(0)
    springs = 50.0 * (torch.cdist(ca, ca) < 8.0).to(F64) + 250.0 * (torch.diag(torch.ones(n - 1), 1)
                                                                   + torch.diag(torch.ones(n - 1), -1)).to(F64)
    precision = torch.eye(3 * n, dtype=F64) / 0.6**2 + anm_hessian(ca, springs)
    mean = Rigid(frames.rots, ca).expand(b, n)
    peptide = {}
    for transport in (False, True):
        cfg = RolloutConfig(steps=5, t_min=0.01, reverse="ancestral", chain_transport=transport)
        out = denoise_frame(ExactGaussian(mean, 0.6, 1e-3, precision=precision), diffuser, 100.0, (b, n), cfg,
                            torch.Generator().manual_seed(12), F64, torch.device("cpu"), contextlib.nullcontext)
        atoms = backbone_atoms(out, aatype)  # [B, N, 4 (N, CA, C, O), 3]
        peptide[transport] = (atoms[:, :-1, 2] - atoms[:, 1:, 0]).norm(dim=-1)  # [B, N-1]
        rms_ca = (out.trans - ca).square().sum(-1).mean().sqrt()
        assert rms_ca > 0.25  # the chain does move (the same draws in both arms: same seed)
    rest = (backbone_atoms(frames, aatype)[:-1, 2] - backbone_atoms(frames, aatype)[1:, 0]).norm(dim=-1)
    spread = {k: (v - rest).square().mean().sqrt().item() for k, v in peptide.items()}
    assert spread[False] > 0.1  # measured 0.13 A (RMS about the mean structure's bond)
    assert spread[True] < 0.5 * spread[False]  # measured 0.05 A


def test_chain_transport_changes_nothing_without_a_step_law(diffuser):
    g = torch.Generator().manual_seed(3)
    b, n = 3, 7
    mean = Rigid(random_rotation((b, n), g, dtype=F64), 3.0 * torch.randn(b, n, 3, generator=g, dtype=F64))
    ends = [denoise_frame(ExactGaussian(mean, 0.0, None), diffuser, 100.0, (b, n),
                          RolloutConfig(steps=5, reverse="ancestral", chain_transport=transport),
                          torch.Generator().manual_seed(4), F64, torch.device("cpu"), contextlib.nullcontext)
            for transport in (False, True)]
    torch.testing.assert_close(ends[1].trans, ends[0].trans)
    torch.testing.assert_close(ends[1].rots, ends[0].rots)
    with pytest.raises(ValueError, match="chain_transport needs rollout.reverse: ancestral"):
        RolloutConfig(chain_transport=True)


def test_training_chain_transport_turns_the_estimate_with_the_trace(diffuser, batch):  # noqa: F811
    """`training.chain_transport`: the x0 estimate's rotations turn with the local CA trace from the network's mean
    to the estimate's translations. A mean that is the true chain turned as a whole, with a wide translation law and
    a narrow rotation law: near t = 0 the estimate's translations follow the (nearly clean) target, and with
    transport its rotations are the truth's, without it the mean's. Padding keeps the plain estimate."""
    truth = Rigid(batch["rots"], batch["trans"])  # [B, L, N]
    turn = rotvec_to_rotmat(torch.tensor([0.0, 0.0, 0.4], dtype=F64))
    mean = Rigid(turn @ truth.rots, truth.trans @ turn.T)
    log_std = torch.stack([torch.full(truth.shape, math.log(3.0), dtype=F64),
                           torch.full(truth.shape, math.log(1e-4), dtype=F64)], -1)
    out = {"pred_rigids": mean, "step_log_std": log_std}
    mask = batch["res_mask"][:, None, :].expand(truth.shape).clone()
    mask[0, :, -3:] = 0  # the last three residues of the first protein as padding
    plain = diffuser.x0_estimate(out, truth, 1e-4)
    turned = diffuser.x0_estimate(out, truth, 1e-4, follow_chain=True, mask=mask)
    angle = {k: rotmat_to_rotvec(r.rots.transpose(-1, -2) @ truth.rots).norm(dim=-1) for k, r in
             (("plain", plain), ("turned", turned))}  # [B, L, N] rad
    real = mask.bool()
    torch.testing.assert_close(angle["plain"], torch.full_like(angle["plain"], 0.4), atol=1e-3, rtol=0)
    assert angle["turned"][real].max() < 1e-3
    torch.testing.assert_close(turned.rots[~real], plain.rots[~real])
    # the training flag reaches the loss: the same prediction scores differently with and without it
    net = FixedPrediction(mean, step_log_std=log_std)
    rot = {flag: float(compute_loss(net, diffuser, batch, TrainingConfig.from_dict(
        {"dist_loss_weight": 0.0, "chain_transport": flag}))["rot"]) for flag in (False, True)}
    assert rot[True] != pytest.approx(rot[False], rel=1e-3)


class TimeRecorder:
    """A rollout context that records the diffusion times the sampler evaluates it at."""

    def __init__(self, mean: Rigid) -> None:
        self.mean, self.times = mean, []

    def denoise(self, frame: Rigid, t: torch.Tensor, frame_time_ps: torch.Tensor) -> dict:
        self.times.append(float(t[0]))
        return {"pred_rigids": self.mean}


@pytest.mark.parametrize("reverse", ["euler", "ancestral"])
def test_log_time_grid_is_geometric_from_one_to_t_min(diffuser, reverse):
    """rollout.time_grid log: the network is called at 1, q, q^2, ..., t_min, half of the steps after t = 1 below
    sqrt(t_min) = 0.032, where the linear grid has only its last."""
    g = torch.Generator().manual_seed(0)
    mean = Rigid(random_rotation((2, 4), g, dtype=F64), torch.randn(2, 4, 3, generator=g, dtype=F64))
    times = {}
    for grid in ("linear", "log"):
        rec = TimeRecorder(mean)
        cfg = RolloutConfig(steps=21, t_min=1e-3, time_grid=grid, reverse=reverse)
        denoise_frame(rec, diffuser, 100.0, (2, 4), cfg, g, F64, torch.device("cpu"), contextlib.nullcontext)
        times[grid] = torch.tensor(rec.times, dtype=F64)
    log = times["log"]
    assert len(log) == 21 and float(log[0]) == pytest.approx(1.0) and float(log[-1]) == pytest.approx(1e-3)
    torch.testing.assert_close(log[1:] / log[:-1], torch.full((20,), 10 ** (-3 / 20), dtype=F64))
    assert int((log < 0.03).sum()) == 10 and int((times["linear"] < 0.03).sum()) == 1
    with pytest.raises(ValueError, match="rollout.time_grid"):
        RolloutConfig(time_grid="cosine")
