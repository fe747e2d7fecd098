"""SE(3) diffusion: exact t = 0, input checks, forward marginals at t = 1, scores consistent with the densities, and
reverse SDEs that carry the prior back onto a point mass."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.integrate import cumulative_trapezoid

from starmd.diffusion import R3Diffuser, SE3Diffuser, SO3Diffuser
from starmd.geometry import Rigid, random_rotation, rotmat_to_rotvec, rotvec_to_rotmat
from starmd.geometry.igso3 import igso3_angle_density

F64 = torch.float64


@pytest.fixture(scope="module")
def diffuser() -> SE3Diffuser:
    return SE3Diffuser(r3={"min_b": 0.1, "max_b": 20.0, "coordinate_scaling": 0.1},
                       so3={"min_sigma": 0.1, "max_sigma": 1.5, "schedule": "logarithmic"})


def _rigids(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> Rigid:
    gen = torch.Generator().manual_seed(seed)
    return Rigid(random_rotation(shape, gen, dtype=dtype), 10 * torch.randn(*shape, 3, generator=gen, dtype=dtype))


def _angle_cdf(sigma: float):
    grid = np.linspace(0, math.pi, 100_001)
    cdf = cumulative_trapezoid(igso3_angle_density(torch.tensor(grid), sigma).numpy(), grid, initial=0)
    return lambda w: np.interp(w, grid, cdf / cdf[-1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_t_zero_returns_input_exactly_with_zero_scores(diffuser, dtype):
    rigids = _rigids((2, 3, 7), dtype)
    out = diffuser.forward_marginal(rigids, 0.0, torch.Generator().manual_seed(1))
    assert torch.equal(out["rigids_t"].rots, rigids.rots) and torch.equal(out["rigids_t"].trans, rigids.trans)
    assert not out["trans_score"].any() and not out["rot_score"].any()
    tau = torch.tensor([[0.0, 0.05, 0.0], [0.1, 0.0, 1e-6]], dtype=dtype)  # per-frame contextual noise
    noised = diffuser.contextual_noise(rigids, tau, torch.Generator().manual_seed(2))
    assert noised.dtype == dtype
    zero = tau == 0
    assert torch.equal(noised.trans[zero], rigids.trans[zero]) and torch.equal(noised.rots[zero], rigids.rots[zero])
    assert (noised.trans[~zero] != rigids.trans[~zero]).all()


def test_small_t_noise_follows_the_schedule(diffuser):
    """tau -> 0: translation std ~ sqrt(min_b tau)/scaling A, rotation vectors ~ N(0, sigma(tau)^2 I)."""
    tau = 1e-4
    rigids = _rigids((20_000,), F64)
    out = diffuser.forward_marginal(rigids, tau, torch.Generator().manual_seed(3))
    dtrans = (out["rigids_t"].trans - rigids.trans).std().item()
    assert dtrans == pytest.approx(math.sqrt(-math.expm1(-0.1 * tau - 9.95 * tau**2)) * 10, rel=0.03)
    sigma = diffuser.so3.sigma(torch.tensor(tau, dtype=F64)).item()
    assert sigma == pytest.approx(math.sqrt(2 * 0.1 * math.expm1(1.4) * tau), rel=0.01)  # d sigma^2/dt at 0
    rotvec = rotmat_to_rotvec(rigids.rots.transpose(-1, -2) @ out["rigids_t"].rots)
    assert rotvec.std(0).numpy() == pytest.approx(np.full(3, sigma), rel=0.03)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), torch.tensor([0.5, 2.0])])
def test_bad_time_raises(diffuser, bad):
    rigids = _rigids((2, 5), torch.float32)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        diffuser.forward_marginal(rigids, bad, None)


def test_bad_inputs_raise(diffuser):
    rigids = _rigids((2, 5), torch.float32)
    with pytest.raises(ValueError, match="does not broadcast"):
        diffuser.forward_marginal(rigids, torch.rand(3), None)
    with pytest.raises(ValueError, match="schedule"):
        SO3Diffuser(schedule="linear")
    with pytest.raises(ValueError, match=r"diffusion.r3: unknown key\(s\) \['beta_max'\]"):
        SE3Diffuser(r3={"beta_max": 20.0})
    with pytest.raises(ValueError, match="dt must be > 0"):
        diffuser.reverse(rigids, torch.zeros(2, 5, 3), torch.zeros(2, 5, 3), 0.5, 0.0, None)
    with pytest.raises(ValueError, match="below t = 0"):
        diffuser.reverse(rigids, torch.zeros(2, 5, 3), torch.zeros(2, 5, 3), 0.01, 0.02, None)


def test_forward_marginal_at_t1_matches_prior(diffuser):
    rigids = _rigids((4000, 5), F64)
    out = diffuser.forward_marginal(rigids, 1.0, torch.Generator().manual_seed(4))
    scaled = out["rigids_t"].trans * 0.1
    assert scaled.mean().item() == pytest.approx(0.0, abs=0.01)
    assert scaled.var().item() == pytest.approx(1.0, abs=0.02)
    ref = diffuser.sample_ref((4000, 5), torch.Generator().manual_seed(5), dtype=F64)
    assert (ref.trans * 0.1).var().item() == pytest.approx(1.0, abs=0.02)
    angles = rotmat_to_rotvec(rigids.rots.transpose(-1, -2) @ out["rigids_t"].rots).norm(dim=-1)
    sigma_1 = diffuser.so3.sigma(torch.tensor(1.0, dtype=F64)).item()
    assert sigma_1 == pytest.approx(math.sqrt(1.5**2 - 0.1**2))
    assert stats.kstest(angles.flatten().numpy(), _angle_cdf(sigma_1)).pvalue > 0.01
    # the prior is Haar: angle law (1 - cos w)/pi
    haar = lambda w: (w - np.sin(w)) / np.pi  # noqa: E731
    assert stats.kstest(rotmat_to_rotvec(ref.rots).norm(dim=-1).flatten().numpy(), haar).pvalue > 0.01


def test_forward_scores_equal_scores_recomputed_from_x0(diffuser):
    """The score returned with a sample equals calc_*_score(x_t, x_0, t): one frame convention throughout."""
    rigids = _rigids((3, 50), F64)
    t = torch.tensor([0.02, 0.3, 0.9], dtype=F64)
    out = diffuser.forward_marginal(rigids, t, torch.Generator().manual_seed(6))
    rt = out["rigids_t"]
    torch.testing.assert_close(diffuser.calc_trans_score(rt.trans, rigids.trans, t), out["trans_score"])
    torch.testing.assert_close(diffuser.calc_rot_score(rt.rots, rigids.rots, t), out["rot_score"])
    assert out["trans_score_scaling"].shape == (3,) and out["rot_score_scaling"].shape == (3,)
    # scalings are the per-component RMS of the scores they normalise
    for key in ("trans", "rot"):
        big = diffuser.forward_marginal(_rigids((20_000,), F64), 0.3, torch.Generator().manual_seed(7))
        rms = big[f"{key}_score"].pow(2).mean().sqrt()
        assert big[f"{key}_score_scaling"].item() == pytest.approx(rms.item(), rel=0.03)


def test_rot_score_is_body_frame_gradient_of_log_density(diffuser):
    """d/ds log p(R_t exp(s e_i) | R_0) = score_i: finite differences of the IGSO3 log-density."""
    t = 0.4
    sigma = diffuser.so3.sigma(torch.tensor(t, dtype=F64))
    rots_0 = random_rotation((8,), torch.Generator().manual_seed(8), dtype=F64)
    rots_t = rots_0 @ rotvec_to_rotmat(0.8 * torch.randn(8, 3, generator=torch.Generator().manual_seed(9), dtype=F64))

    def log_f(rot):
        w = rotmat_to_rotvec(rots_0.transpose(-1, -2) @ rot).norm(dim=-1)
        return torch.log(igso3_angle_density(w, sigma) / (1 - torch.cos(w)))

    h = 1e-6
    fd = torch.stack([(log_f(rots_t @ rotvec_to_rotmat(h * e)) - log_f(rots_t @ rotvec_to_rotmat(-h * e))) / (2 * h)
                      for e in torch.eye(3, dtype=F64)], -1)
    torch.testing.assert_close(diffuser.calc_rot_score(rots_t, rots_0, t), fd, atol=1e-6, rtol=1e-6)


def _reverse_to(diffuser: SE3Diffuser, x_0: Rigid, n_samples: int, t_end: float, seed: int) -> Rigid:
    """Reverse SDE from the prior, 200 Euler-Maruyama steps 1 -> t_end, with the exact conditional scores of x_0."""
    gen = torch.Generator().manual_seed(seed)
    rigids = diffuser.sample_ref((n_samples, x_0.shape[-1]), gen, dtype=F64)
    x0 = x_0.unsqueeze(0).expand(n_samples, x_0.shape[-1])
    times = np.linspace(1.0, t_end, 201)
    for t, t_next in zip(times[:-1], times[1:]):
        rot_score = diffuser.calc_rot_score(rigids.rots, x0.rots, float(t))
        trans_score = diffuser.calc_trans_score(rigids.trans, x0.trans, float(t))
        rigids = diffuser.reverse(rigids, rot_score, trans_score, float(t), float(t - t_next), gen, center=False)
    return rigids


@pytest.mark.parametrize("t_end, rel", [(0.05, 0.1), (0.01, 0.35)])
def test_reverse_sde_with_exact_score_concentrates_on_the_point_mass(diffuser, t_end, rel):
    """From the prior (10 A, Haar) the reverse SDE lands on the forward marginal at t_end around x_0. Euler-Maruyama
    overshoots the spread by O(dt / t) on the last steps: ~5% at t_end = 0.05, ~25% at 0.01 with 200 uniform steps."""
    x_0 = _rigids((6,), F64, seed=10)
    final = _reverse_to(diffuser, x_0, 500, t_end, seed=11)
    t = torch.tensor(t_end, dtype=F64)
    # translations: N(alpha x_0, var) at t_end
    dev = final.trans - diffuser.r3.alpha_t(t) * x_0.trans
    expected_std = diffuser.r3.conditional_var(t).sqrt().item() / 0.1  # 0.45 A at t = 0.01
    assert dev.mean().abs().item() < 0.1
    assert dev.std().item() == pytest.approx(expected_std, rel=rel)
    # rotations: residual rotation vectors ~ N(0, sigma(t_end)^2 I) (0.083 rad at t = 0.01)
    rotvec = rotmat_to_rotvec(x_0.rots.transpose(-1, -2) @ final.rots)
    sigma = diffuser.so3.sigma(t).item()
    assert rotvec.norm(dim=-1).max().item() < 6 * sigma
    assert rotvec.mean(0).abs().max().item() < 6 * sigma / math.sqrt(500)  # unbiased: 6 standard errors
    assert rotvec.std().item() == pytest.approx(sigma, rel=rel)


def test_reverse_masks_and_centres(diffuser):
    rigids = _rigids((2, 9), torch.float32)
    mask = torch.ones(2, 9)
    mask[:, -3:] = 0  # padding residues
    gen = torch.Generator().manual_seed(12)
    scores = torch.randn(2, 9, 3, generator=gen)
    out = diffuser.reverse(rigids, scores, scores, 0.5, 0.01, gen, mask=mask, center=True)
    assert torch.equal(out.trans[:, -3:], rigids.trans[:, -3:]) and torch.equal(out.rots[:, -3:], rigids.rots[:, -3:])
    torch.testing.assert_close(out.trans[:, :6].mean(1), rigids.trans[:, :6].mean(1))
    assert (out.trans[:, :6] != rigids.trans[:, :6]).all()
    masked = diffuser.forward_marginal(rigids, 0.5, gen, diffuse_mask=mask)
    assert torch.equal(masked["rigids_t"].trans[:, -3:], rigids.trans[:, -3:])
    assert not masked["rot_score"][:, -3:].any() and masked["rot_score"][:, :6].all()


def test_seeded_and_differentiable(diffuser):
    rigids = _rigids((2, 4), torch.float32)
    a = diffuser.forward_marginal(rigids, 0.3, torch.Generator().manual_seed(13))
    b = diffuser.forward_marginal(rigids, 0.3, torch.Generator().manual_seed(13))
    assert torch.equal(a["rigids_t"].rots, b["rigids_t"].rots) and torch.equal(a["rot_score"], b["rot_score"])
    # x0 prediction -> score is differentiable, also where the prediction equals R_t (angle 0) or t = 0
    pred = rigids.rots.clone().requires_grad_(True)
    t = torch.tensor([0.3, 0.0])
    score = diffuser.calc_rot_score(a["rigids_t"].rots, pred, t) + diffuser.calc_rot_score(pred, pred, t)
    score.sum().backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_r3_standalone_units():
    """Callers pass Angstrom; scores are in scaled units (score = -z / std with coordinates * 0.1)."""
    r3 = R3Diffuser(coordinate_scaling=0.1)
    x_0 = torch.zeros(1000, 10, 3, dtype=F64)
    x_t, score = r3.forward_marginal(x_0, 1.0, torch.Generator().manual_seed(14))
    assert x_t.std().item() == pytest.approx(10.0, rel=0.02)
    torch.testing.assert_close(score, -x_t * 0.1 / r3.conditional_var(torch.tensor(1.0, dtype=F64)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_shapes_and_t_zero(diffuser):
    rigids = _rigids((2, 16), torch.float32).to("cuda")
    gen = torch.Generator(device="cuda").manual_seed(15)
    out = diffuser.forward_marginal(rigids, torch.tensor([0.0, 0.5], device="cuda"), gen)
    assert out["rigids_t"].device.type == "cuda"
    assert torch.equal(out["rigids_t"].trans[0], rigids.trans[0])
    step = diffuser.reverse(out["rigids_t"], out["rot_score"], out["trans_score"], 0.5, 0.01, gen)
    assert torch.isfinite(step.rots).all() and step.device.type == "cuda"


def test_schema_defaults_are_the_constructor_defaults(repo_root):
    """schemas/diffusion.schema.yaml documents exactly the keyword arguments SE3Diffuser passes on."""
    import inspect

    import jsonschema
    import yaml

    schema = yaml.safe_load((repo_root / "schemas" / "diffusion.schema.yaml").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    for cls, section in ((R3Diffuser, "r3"), (SO3Diffuser, "so3")):
        params = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
        documented = {k: v["default"] for k, v in schema["properties"][section]["properties"].items()}
        assert documented == params
    with pytest.raises(jsonschema.ValidationError, match="l_max"):
        jsonschema.validate({"so3": {"l_max": 1000}}, schema)
