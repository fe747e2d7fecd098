"""The block-causal denoising loss: all L target frames of a window trained in one forward pass.

Per window: target diffusion times t in [t_min, 1] (`training.t_sampling`) and contextual-noise times
tau ~ U[0, tau_max], one per frame.
Context frames are the clean frames re-noised to tau (tau_max = 0: exactly clean, the ablation); targets are noised
to t. The network predicts x0 for every target (with `model.step_std_init`, x0 is the posterior mean around its
prediction, `SE3Diffuser.x0_estimate`); the losses follow FrameDiff:
  rot   |(s_rot(R_t | R_0) - s_rot(R_t | R_0_pred)) / rot_score_scaling(t)|^2  (IGSO3 score matching, O(1) at all t)
  trans |(x0_pred - x0) * coordinate_scaling|^2                                (x0 loss in nm)
  dist  (|x_a - x_b|_pred - |x_a - x_b|) ^ 2 * coordinate_scaling^2 over atom pairs closer than dist_loss_cutoff
        in the clean frame, for targets with t < dist_loss_t_max (auxiliary, FrameDiff's distance-matrix loss);
        atoms: N, CA, C of every residue placed by the frames (`dist_loss_atoms: backbone`), or CA only (`ca`).
        Through N and C the loss sees the rotations, so it also fixes the peptide bonds C(i)-N(i+1).
        It charges the x0 estimate, or with `dist_loss_on: mean` the network's own prediction m: with a step law the
        estimate follows the noisy frame at small t by design, and charging its distances pulls the width down.
  collective  sum_m (u_m . (x0_pred - x0) * coordinate_scaling)^2 over the `collective_modes` softest ANM modes u_m
        of the window's first clean frame (auxiliary). Why: the trans loss gives each of the 3N directions of the
        error weight 1/N, and the slow collective modes, which carry the dynamics' memory, are a few of them; on the
        known-answer system the best linear use of history lowers the per-coordinate step residual by 2-4% at tau
        0.01-0.05 while it lowers the slowest mode's error by 7-20% (clean history: 11% and 47%;
        docs/study/filters.md), so the trans loss hardly rewards learning it.
Each part is a masked mean over a window's residues and frames, then a plain mean over windows, so the mean of
per-rank losses (what DDP's gradient averaging computes) equals the loss of the global batch.

All noise comes from one generator per window seeded by the window's `noise_seed` (starmd.training.dataset), so a
window's loss is the same whichever rank or micro-batch it lands in.
"""

from __future__ import annotations

from typing import Any

import torch

from starmd.geometry import Rigid
from starmd.geometry.backbone import IDEAL_LOCAL, RESNAMES
from starmd.geometry.elastic import anm_modes
from starmd.training.config import TrainingConfig


def _window_generators(noise_seed: torch.Tensor, device: torch.device) -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(int(s)) for s in noise_seed.tolist()]


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x, mask [B, ...] -> [B]: mean of x over the masked entries of each window."""
    dims = tuple(range(1, x.dim()))
    return (x * mask).sum(dims) / mask.sum(dims).clamp_min(1)


def _loss_atoms(frames: Rigid, atoms: str) -> torch.Tensor:
    """Atom positions [..., N A, 3] (A) for the distance loss: CA (A = 1) or N, CA, C (A = 3, residue-major), the
    latter placed with alanine's ideal local geometry for every residue (the training batch carries no sequence;
    other residue types differ by < 0.05 A)."""
    if atoms == "ca":
        return frames.trans
    local = IDEAL_LOCAL[RESNAMES.index("ALA"), :2].to(dtype=frames.dtype, device=frames.device)  # N, C [2, 3]
    n, c = frames.apply(local[0]), frames.apply(local[1])  # [..., N, 3]
    return torch.stack([n, frames.trans, c], dim=-2).flatten(-3, -2)


def target_times(u: torch.Tensor, cfg: TrainingConfig) -> torch.Tensor:
    """Diffusion times of the targets from uniform draws u in [0, 1): uniform on [t_min, 1], or log-uniform, which
    puts as many targets in [t_min, 10 t_min] as in [0.1, 1]. Small t is where the denoiser has to follow the noisy
    frame rather than predict the conditional mean; a step smaller than the noise at t_min is never resolved."""
    if cfg.t_sampling == "log_uniform":
        return cfg.t_min ** (1 - u)
    return cfg.t_min + (1 - cfg.t_min) * u


def compute_loss(model: torch.nn.Module, diffuser: Any, batch: dict[str, torch.Tensor],
                 cfg: TrainingConfig) -> dict[str, torch.Tensor]:
    """Loss of a batch of windows (see starmd.training.dataset.collate for the keys and shapes).

    Returns dict(loss, rot, trans[, dist]) of scalar tensors; `loss` is the weighted sum that is backpropagated.
    """
    rigids_0 = Rigid(batch["rots"], batch["trans"])  # [B, L, N] (A)
    b, n_frames, _ = rigids_0.shape
    dtype, device = rigids_0.dtype, rigids_0.device
    res_mask = batch["res_mask"]  # [B, N]
    gens = _window_generators(batch["noise_seed"], device)
    t = target_times(torch.stack([torch.rand(n_frames, generator=g, dtype=dtype, device=device) for g in gens]),
                     cfg)  # [B, L]
    tau = torch.stack([cfg.tau_max * torch.rand(n_frames, generator=g, dtype=dtype, device=device)
                       for g in gens])  # [B, L]
    noised = [diffuser.forward_marginal(rigids_0[i], t[i], gens[i], diffuse_mask=res_mask[i].expand(n_frames, -1))
              for i in range(b)]
    tgt = Rigid.stack([o["rigids_t"] for o in noised], dim=0)  # [B, L, N]
    ctx = Rigid.stack([diffuser.contextual_noise(rigids_0[i], tau[i], gens[i]) for i in range(b)], dim=0)
    # bf16 only inside the network (which keeps its rigids in fp32); noising and losses stay in full precision
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda"):
        out = model(batch["single"], batch["pair"], ctx, tau, tgt, t, batch["frame_time_ps"], batch["delta_t_ps"],
                    res_mask, window=cfg.context_window or None)
    mask = res_mask[:, None, :].expand(b, n_frames, -1)  # [B, L, N]
    # x0 (A) [B, L, N]: the prediction, or the posterior mean around it
    pred = diffuser.x0_estimate(out, tgt, t, follow_chain=cfg.chain_transport, mask=mask)
    if not cfg.train_first_target and n_frames > 1:  # target 0 sees no context, which never happens at inference
        mask = mask * (torch.arange(n_frames, device=device) > 0).to(mask.dtype)[None, :, None]

    rot_score = torch.stack([o["rot_score"] for o in noised])  # [B, L, N, 3]
    rot_scaling = torch.stack([o["rot_score_scaling"] for o in noised])  # [B, L]
    pred_rot_score = diffuser.calc_rot_score(tgt.rots, pred.rots, t)  # [B, L, N, 3]
    rot = (((rot_score - pred_rot_score) / rot_scaling[..., None, None]) ** 2).sum(-1)  # [B, L, N]
    rot = rot * (t > cfg.rot_loss_t_min)[..., None]  # FrameDiff's threshold: the small-t score error explodes

    scale = diffuser.r3.coordinate_scaling
    trans = (((pred.trans - rigids_0.trans) * scale) ** 2).sum(-1)  # [B, L, N]

    parts = {"rot": _masked_mean(rot, mask).mean(), "trans": _masked_mean(trans, mask).mean()}
    loss = cfg.rot_loss_weight * parts["rot"] + cfg.trans_loss_weight * parts["trans"]
    if cfg.collective_loss_weight > 0:
        modes = anm_modes(rigids_0.trans[:, 0], res_mask, cfg.collective_modes)  # [B, M, N, 3]
        error = (pred.trans - rigids_0.trans) * scale * mask[..., None]  # [B, L, N, 3] (nm)
        projected = torch.einsum("blnc,bmnc->blm", error, modes).square().sum(-1)  # [B, L]
        parts["collective"] = _masked_mean(projected, mask.amax(-1)).mean()
        loss = loss + cfg.collective_loss_weight * parts["collective"]
    if cfg.dist_loss_weight > 0:
        charged = pred if cfg.dist_loss_on == "estimate" else out["pred_rigids"]
        x_true, x_pred = (_loss_atoms(r, cfg.dist_loss_atoms) for r in (rigids_0, charged))  # [B, L, N A, 3]
        atom_mask = mask.repeat_interleave(x_true.shape[-2] // mask.shape[-1], dim=-1)  # [B, L, N A]
        d_true = torch.cdist(x_true, x_true)  # [B, L, N A, N A]
        d_pred = torch.cdist(x_pred, x_pred)
        pair_mask = (atom_mask[..., :, None] * atom_mask[..., None, :] * (d_true < cfg.dist_loss_cutoff)
                     * (t < cfg.dist_loss_t_max)[..., None, None])  # [B, L, N A, N A]
        pair_mask = pair_mask * (1 - torch.eye(atom_mask.shape[-1], dtype=dtype, device=device))
        parts["dist"] = _masked_mean(((d_pred - d_true) * scale) ** 2, pair_mask).mean()
        loss = loss + cfg.dist_loss_weight * parts["dist"]
    return {"loss": loss, **parts}
