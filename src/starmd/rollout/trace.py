"""Generated frames conditioned on their CA-CA bonds (`rollout.ca_restraint`).

The peptide restraint (`starmd.rollout.peptide`) turns rotations only and leaves the drawn CA trace as it is; where
the law draws a CA-CA distance the trans peptide cannot span (3.8 A), no turn closes the bond. A step law's
per-residue translation widths do that (docs/study: CA-CA 3.97 +- 0.15 A in the demo's rollout, MD 3.87 +- 0.05 A;
a third of its frames broken at 4.2 A). Here the drawn translations are conditioned on each bonded CA-CA distance
being the start structure's up to Gaussian error of std scale x CA_CA_STD_A, by perturb-and-MAP as in the peptide
restraint: with the drawn translations as the prior sample (shift v = 0, width s per residue: the step law's
translation width, else DEFAULT_TRANS_STD) and the target distances perturbed by N(0, sigma^2), the minimiser of

    sum_i |v_i|^2 / s_i^2 + sum_bonds (d_i(v) - d_start - e)^2 / sigma^2

is an exact draw from the conditioned law where d is linear in v (small shifts), found by Gauss-Newton. Rotations
are left as drawn; the peptide restraint, applied after this, turns them onto the corrected trace.
"""

from __future__ import annotations

import torch

from starmd.geometry.peptide import ca_distances
from starmd.geometry.rigid import Rigid
from starmd.rollout.peptide import PeptideChain
from starmd.rollout.restraint import gauss_newton_step, minimise

CA_CA_STD_A = 0.05  # A: the spread of a bonded CA-CA distance in MD at 300 K (demo peptides 0.053-0.055 A)
DEFAULT_TRANS_STD = 0.25  # A: the translation width assumed without a step law (the study's model.step_std_init)
_CONVERGED_A = 1e-5  # Gauss-Newton stops once no residue moves by more than this in a step


def condition_on_ca_bonds(frames: Rigid, chain: PeptideChain, scale: float, trans_std: torch.Tensor | None,
                          generator: torch.Generator | None, iterations: int = 10) -> Rigid:
    """Frames Rigid [B, N] with translations moved so that their bonded CA-CA distances are the start structure's
    within scale x CA_CA_STD_A (module docstring); trans_std [B, N] (A) the law's translation width, or None
    (DEFAULT_TRANS_STD). At most `iterations` Gauss-Newton steps (`starmd.rollout.restraint.minimise`), fewer once no
    residue moves by more than _CONVERGED_A. Rotations are returned unchanged."""
    b, n = frames.shape
    if n < 2:
        return frames
    drawn = frames.trans.to(torch.float64)  # float32 rounding would hide the convergence test
    dtype, device = drawn.dtype, drawn.device
    sigma = scale * CA_CA_STD_A
    target = chain.ca_ca.to(device=device, dtype=dtype) + sigma * torch.randn(
        (b, n - 1), generator=generator, dtype=dtype, device=device)  # [B, N-1]
    weight = chain.bonded.to(device=device, dtype=dtype) / sigma  # [N-1]
    width = torch.full((b, n), DEFAULT_TRANS_STD, dtype=dtype, device=device) if trans_std is None \
        else trans_std.to(dtype)
    prior = (1.0 / width**2)[..., None].expand(b, n, 3)  # [B, N, 3] A^-2
    no_wall = (torch.zeros(b, 0, dtype=dtype, device=device), torch.zeros(b, 0, n, 3, dtype=dtype, device=device))

    def state(shift: torch.Tensor) -> dict[str, torch.Tensor]:
        dist, unit = ca_distances(drawn + shift)
        resid = ((dist - target) * weight)[..., None]  # [B, N-1, 1], in stds
        jac = torch.stack([-unit, unit], dim=-2)[..., None, :, :] * weight[:, None, None, None]  # [B, N-1, 1, 2, 3]
        value = 0.5 * (resid.square().sum((-1, -2)) + (prior * shift.square()).sum((-1, -2)))  # [B]
        return {"x": shift, "resid": resid, "jac": jac, "value": value}

    def step(current: dict[str, torch.Tensor]) -> torch.Tensor:
        return gauss_newton_step(current["resid"], current["jac"], prior, current["x"], *no_wall)

    final = minimise(state, torch.zeros_like(drawn), step, lambda shift, v: shift + v, iterations, _CONVERGED_A)
    return Rigid(frames.rots, (drawn + final["x"]).to(frames.trans.dtype))
