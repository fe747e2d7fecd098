"""The solver the rollout's restraints share (`starmd.rollout.peptide` on rotations, `starmd.rollout.trace` on
translations): Gauss-Newton on a per-residue 3-vector with a Gaussian prior, each step halved where it would raise
the objective, because a perturb-and-MAP draw is the minimiser of prior + restraint and both restraints are nearly,
not exactly, linear in their variables."""

from __future__ import annotations

from typing import Callable

import torch

_HALVINGS = 8  # most halvings of a Gauss-Newton step that would raise the objective

State = dict[str, torch.Tensor]


def minimise(state: Callable[[torch.Tensor], State], start: torch.Tensor, step: Callable[[State], torch.Tensor],
             move: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], iterations: int, converged: float) -> State:
    """Damped Gauss-Newton over a batch [B, ...]: `state(x)` evaluates the variables x (its "x" entry, "value" [B] the
    objective), `step(state)` gives the Gauss-Newton step [B, N, 3], `move(x, step)` applies one. Each frame keeps
    its own step size, halved up to _HALVINGS times while the step would raise its objective (a step still refused
    then is not taken); at most `iterations` steps, fewer once no frame's step exceeds `converged` anywhere."""
    current = state(start)
    for _ in range(iterations):
        direction = step(current)
        b = direction.shape[0]
        size = torch.ones(b, dtype=direction.dtype, device=direction.device)
        for _ in range(_HALVINGS):
            trial = state(move(current["x"], size[:, None, None] * direction))
            better = trial["value"] <= current["value"]
            if bool(better.all()):
                break
            size = torch.where(better, size, size / 2)
        current = {k: torch.where(better.view(-1, *[1] * (v.dim() - 1)), trial[k], v) for k, v in current.items()}
        taken = torch.where(better[:, None, None], size[:, None, None] * direction, 0.0)  # a refused step is final
        if float(taken.abs().max()) < converged:
            break
    return current


def gauss_newton_step(resid: torch.Tensor, jac: torch.Tensor, prior: torch.Tensor, offset: torch.Tensor,
                       wall_resid: torch.Tensor, wall_jac: torch.Tensor) -> torch.Tensor:
    """The Gauss-Newton step [B, N, 3] of 0.5 (|resid|^2 + |wall_resid|^2 + sum prior offset^2):
    (J^T J + diag(prior)) step = -(J^T r + prior offset), with the bonds' J block-bidiagonal (each bond's rows touch
    residues i and i + 1) and the wall's dense (wall_jac [B, P, N, 3]), assembled as a 3N x 3N system: one Cholesky
    per frame."""
    b, n, _ = offset.shape
    lo, hi = jac[..., 0, :], jac[..., 1, :]  # gradients on residue i and i + 1: [B, N-1, 3, 3]
    idx = torch.arange(n - 1, device=offset.device)
    hess = torch.zeros(b, n, n, 3, 3, dtype=offset.dtype, device=offset.device)
    hess[:, idx, idx] += torch.einsum("bnki,bnkj->bnij", lo, lo)
    hess[:, idx + 1, idx + 1] += torch.einsum("bnki,bnkj->bnij", hi, hi)
    hess[:, idx, idx + 1] += torch.einsum("bnki,bnkj->bnij", lo, hi)
    hess[:, idx + 1, idx] += torch.einsum("bnki,bnkj->bnij", hi, lo)
    grad = prior * offset
    grad[:, :-1] += torch.einsum("bnki,bnk->bni", lo, resid)
    grad[:, 1:] += torch.einsum("bnki,bnk->bni", hi, resid)
    wall = wall_jac.reshape(b, -1, 3 * n)  # [B, P, 3N]
    hess = (hess.permute(0, 1, 3, 2, 4).reshape(b, 3 * n, 3 * n) + torch.diag_embed(prior.reshape(b, 3 * n))
            + wall.transpose(-1, -2) @ wall)
    grad = grad.reshape(b, 3 * n, 1) + wall.transpose(-1, -2) @ wall_resid[..., None]
    step = torch.cholesky_solve(-grad, torch.linalg.cholesky(hess))
    return step.reshape(b, n, 3)
