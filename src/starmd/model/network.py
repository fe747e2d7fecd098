"""StarMD: the spatio-temporal denoiser. Training runs one block-causal pass over L context + L target frames;
rollout denoises one frame at a time against a KVCache (`init_cache`, `step`, `append`).

Both paths go through `_denoise`, so a context frame appended to the cache computes exactly what the full forward
computes for it, and `step` for target l equals the full forward's target l (the cache-equivalence contract).

Geometry across frames (`target_anchor`). A token's rigid updates start from its *anchor* frame. With "previous"
(default) the anchor of target frame l is context frame l - 1, so the x0 prediction of a new frame is an
SE(3)-equivariant per-residue update of the frame before it ("stay where you were" is the zero update), and the
FrameEncoder shows each token its noisy frame relative to the anchor. Without it ("self", the first design) a target
is updated from its own noisy frame, which at large diffusion time says nothing about where the new frame sits: that
model ignored its history (issue 13). Target 0 of a training window has no context frame; its anchor is itself.
The cache holds the last appended frame (O(N)) for this, and never any pair tensor.

Motion of the history (`context_motion`). Velocities are hidden in MD frames; with it, each context frame's tokens
also see that frame relative to the context frame before it (the same anchor-pose invariants, P_i^-1 T_i), i.e. a
per-residue displacement, so a target attending to its history reads motion directly instead of differencing
conformations across frames. A context frame's rigids still start from itself.

Extrapolating the history (`history_extrapolation` K, off by default). Positions alone are not Markov: the next
frame depends on the hidden velocity, which only differences of past frames reveal, and reading it through S x T
attention means differencing invariant singles across frames. With K > 0 a zero-initialised head predicts weights
and a weighted sum of the displacements x_{l-k} - x_{l-k-1}, k = 1..K, between target l's last K + 1 context frames
(global frame, A) is added: a linear filter over the history, equivariant (invariant weights times displacement
vectors), whose weights the translation loss fits directly. `history_coupling`: `pair` (default) weighs residue j's
displacements in residue i's x0 shift by the target frame's final pair state z_ij (over the number of residues), so
the filter can read collective motion (a slow mode's momentum is nearly invisible in one residue's noised steps,
docs/study/filters.md); `residue` filters each residue's own displacements (weights from its single); `anchor`
takes the pair weights from the static pair features and moves target l's anchor (context frame l - 1) before the
trunk, so the update starts from the extrapolated frame and, at small diffusion time, the noisy frame rather than
the filter decides x0. A displacement whose older frame is outside the context window (or before frame 0) is left
out, so a window of 1 is exactly Markovian. The cache keeps the last K + 1 appended translations (O(K N)).

The step's width (`step_std_init`). With it, a small head on each target token's final single also predicts the
log width (A, rad) of that residue's next-frame law around the x0 prediction, and the denoiser is the posterior mean
under that law (`SE3Diffuser.posterior_mean`, an EDM-style skip): at small diffusion time the x0 estimate follows the
noisy frame itself, so sampled frames keep the width of the data. The widths are learned through the denoising loss
(the posterior mean is its minimiser only at the true width). Off by default; config.yaml turns it on
with `step_elastic`, rolled out with the CA-trace and peptide restraints, which repair what its independent
per-residue widths break (CA-CA and peptide bonds; docs/study/). With `step_modes` r > 0 the head also predicts
r collective displacement modes U [N, r] (A), so the translation law's covariance is diag(s^2) + U U^T across
residues: a frame's motion is correlated along the chain, and a diagonal law, measured on the known-answer
system, put its width into independent per-residue jitter that broke CA-CA geometry. With `step_elastic`
[cutoff A, contact stiffness, bond stiffness A^-2] the translation law's precision is instead diag(1/s^2) + H(m)
over the 3N coordinates: H is the anisotropic elastic network of the predicted frame's CA atoms, springs of one
learned stiffness between residues closer than the cutoff (smoothly switched off over 1 A) plus springs of another
between chain neighbours (the CA-CA bond, far stiffer in MD). Modes stiffer than the per-residue width (bond
stretching) then get the small variance 1 / lambda (lambda their eigenvalue of H), softer ones (bending, the slow
collective motion) the diffusive s^2: the shape of an overdamped step of an elastic network, with no mode to learn.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from starmd.geometry import Rigid
from starmd.geometry.elastic import anm_hessian
from starmd.model.attention import BlockCausalLayout, relative_time_features
from starmd.model.blocks import DiffusionBlock
from starmd.model.cache import KVCache, StaticKVCache
from starmd.model.frame_encoder import FrameEncoder
from starmd.model.primitives import Linear, geometry_dtype

# Rigids enter in Angstrom; the trunk works in nm, as AF2's structure module does, so IPA point distances are O(1).
_NM_PER_ANGSTROM = 0.1


def model_hparams(model_config: dict[str, Any]) -> dict[str, Any]:
    """Every StarMD hyperparameter (config `model`) with the defaults filled in. Checkpoints store this, so a
    checkpoint rebuilds the network it was trained as even after a default changes in the code."""
    params = {k: p.default for k, p in inspect.signature(StarMD.__init__).parameters.items()
              if p.kind is p.KEYWORD_ONLY and k not in ("c_s_in", "c_z_in")}
    unknown = sorted(set(model_config) - set(params))
    if unknown:
        raise ValueError(f"model config: unknown key(s) {unknown}; expected some of {sorted(params)}")
    return {**params, **model_config}


class StarMD(nn.Module):
    """STAR-MD network. Constructor kwargs (except c_s_in/c_z_in, read from the features file) = config `model`."""

    def __init__(self, *, c_s_in: int, c_z_in: int, c_s: int = 96, c_z: int = 48, n_blocks: int = 4,
                 n_heads: int = 4, c_hidden: int = 24, no_heads_ipa: int = 4, c_hidden_ipa: int = 16,
                 no_qk_points: int = 4, no_v_points: int = 8, transition_n: int = 2, c_time: int = 32,
                 c_phys_time: int = 16, n_rbf: int = 16, rbf_max: float = 20.0, neighbour_radius: float = 8.0,
                 target_anchor: str = "previous", c_relative_time: int = 0, context_motion: bool = False,
                 step_std_init: list[float] | None = None, step_modes: int = 0,
                 step_elastic: list[float] | None = None, history_extrapolation: int = 0,
                 history_coupling: str = "pair") -> None:
        super().__init__()
        if target_anchor not in ("previous", "self"):
            raise ValueError(f"model.target_anchor must be 'previous' or 'self', got {target_anchor!r}")
        if c_relative_time < 0 or c_relative_time % 2:
            raise ValueError(f"model.c_relative_time must be an even number >= 0 (0 = off), got {c_relative_time}")
        if step_std_init is not None and (len(step_std_init) != 2 or min(step_std_init) <= 0):
            raise ValueError(f"model.step_std_init must be [A, rad], both > 0 (or null = off), got {step_std_init}")
        if step_modes < 0 or (step_modes and step_std_init is None):
            raise ValueError(f"model.step_modes must be >= 0 and needs model.step_std_init, got {step_modes} with "
                             f"step_std_init {step_std_init}")
        if step_elastic is not None and (len(step_elastic) != 3 or min(step_elastic) <= 0 or step_std_init is None
                                         or step_modes):
            raise ValueError(f"model.step_elastic must be [cutoff A, contact stiffness A^-2, bond stiffness A^-2], "
                             f"all > 0, with step_std_init set and step_modes 0; got {step_elastic} (step_std_init "
                             f"{step_std_init}, step_modes {step_modes})")
        if history_extrapolation < 0:
            raise ValueError(f"model.history_extrapolation must be >= 0 (0 = off), got {history_extrapolation}")
        if history_coupling not in ("pair", "residue", "anchor"):
            raise ValueError(f"model.history_coupling must be 'pair', 'residue' or 'anchor', got {history_coupling!r}")
        if history_coupling == "anchor" and target_anchor != "previous":
            raise ValueError("model.history_coupling 'anchor' moves the previous-frame anchor: it needs "
                             f"model.target_anchor 'previous', got {target_anchor!r}")
        self.c_s_in, self.c_z_in, self.n_blocks = c_s_in, c_z_in, n_blocks
        self.target_anchor, self.c_relative_time, self.context_motion = target_anchor, c_relative_time, context_motion
        self.single_in = nn.Sequential(nn.LayerNorm(c_s_in), Linear(c_s_in, c_s))
        self.pair_in = nn.Sequential(nn.LayerNorm(c_z_in), Linear(c_z_in, c_z))
        self.frame_encoder = FrameEncoder(c_s, c_z, c_time, c_phys_time, n_rbf, rbf_max, neighbour_radius)
        self.blocks = nn.ModuleList(
            DiffusionBlock(c_s, c_z, no_heads_ipa, c_hidden_ipa, no_qk_points, no_v_points, n_heads, c_hidden,
                           transition_n, update_pair=i < n_blocks - 1, c_relative_time=c_relative_time)
            for i in range(n_blocks)
        )
        self.history_extrapolation, self.history_coupling = history_extrapolation, history_coupling
        # weights of the last K context displacements in the x0 translation; zero at init (no extrapolation)
        self.extrapolation = None
        if history_extrapolation:
            c_in = c_s if history_coupling == "residue" else c_z
            self.extrapolation = Linear(c_in, history_extrapolation, init="final")
        self.step_std = None
        if step_std_init is not None:  # per-residue log width of the next frame's law; starts at step_std_init
            self.step_std = Linear(c_s, 2, init="final")
            with torch.no_grad():
                self.step_std.bias.copy_(torch.tensor([math.log(v) for v in step_std_init]))
        # collective modes of the translation step; random (not zero) init, since U U^T has no gradient at U = 0
        self.step_modes = Linear(c_s, step_modes) if step_modes else None
        self.step_mode_scale = step_std_init[0] if step_std_init is not None else 1.0
        self.step_elastic_cutoff = None if step_elastic is None else step_elastic[0]
        self.step_log_stiffness = None  # log (contact, bond) stiffness (A^-2), two learned numbers
        if step_elastic is not None:
            self.step_log_stiffness = nn.Parameter(torch.tensor([math.log(v) for v in step_elastic[1:]]))
        # Recompute each diffusion block in the backward pass instead of keeping its activations (the per-frame pair
        # state dominates training memory); set from training.activation_checkpointing, not a model key: it changes
        # memory and time, never the numbers.
        self.activation_checkpointing = False

    # --- shared trunk -------------------------------------------------------------------------------------------
    def _embed_static(self, single: torch.Tensor, pair: torch.Tensor, res_mask: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen features [B, N, c_s_in], [B, N, N, c_z_in] -> [B, N, c_s], [B, N, N, c_z] (once per protein)."""
        b, n = res_mask.shape
        if single.shape != (b, n, self.c_s_in):
            raise ValueError(f"single features must be [B, N, c_s_in] = {(b, n, self.c_s_in)}, got {tuple(single.shape)}")
        if pair.shape != (b, n, n, self.c_z_in):
            raise ValueError(f"pair features must be [B, N, N, c_z_in] = {(b, n, n, self.c_z_in)}, "
                             f"got {tuple(pair.shape)}")
        return self.single_in(single), self.pair_in(pair)

    def _denoise(self, s0: torch.Tensor, z0: torch.Tensor, frames: Rigid, anchors: Rigid, starts: Rigid,
                 t: torch.Tensor, frame_time_ps: torch.Tensor, delta_t_ps: torch.Tensor, res_mask: torch.Tensor,
                 attn_mask: torch.Tensor | BlockCausalLayout | None,
                 past_kv: list[tuple[torch.Tensor, torch.Tensor] | None] | None = None,
                 past_times: torch.Tensor | None = None
                 ) -> tuple[Rigid, torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """F frames through the trunk. frames, anchors (pose features) and starts (the rigids updates compose onto)
        Rigid [B, F, N] (A), t / frame_time_ps [B, F], attn_mask [B, 1, F N or 1, T_past + F N] (None: all visible)
        or the training BlockCausalLayout; past_kv: per block the held keys/values [B, H, T_past, C] (or None), and
        past_times [B, F_past] their frames' times. Returns x0 prediction Rigid [B, F, N] (A), singles
        [B, F, N, c_s], the final pair state [B, F, N, N, c_z] and the per-block S x T keys/values [B, H, F N, C]."""
        s, z = self.frame_encoder(s0, z0, frames, anchors, t, frame_time_ps, delta_t_ps, res_mask)
        time_feats = None
        if self.c_relative_time:
            key_times = frame_time_ps if past_times is None else torch.cat([past_times, frame_time_ps], dim=1)
            time_feats = relative_time_features(frame_time_ps, key_times, delta_t_ps, self.c_relative_time)
        rigids = starts.scale_translation(_NM_PER_ANGSTROM)
        kvs = []
        for i, block in enumerate(self.blocks):
            args = (s, z, rigids, res_mask, attn_mask, None if past_kv is None else past_kv[i], time_feats)
            if self.activation_checkpointing and torch.is_grad_enabled():
                s, z, rigids, kv = checkpoint(block, *args, use_reentrant=False)
            else:
                s, z, rigids, kv = block(*args)
            kvs.append(kv)
        return rigids.scale_translation(1.0 / _NM_PER_ANGSTROM), s, z, kvs

    # --- training -----------------------------------------------------------------------------------------------
    def forward(self, single: torch.Tensor, pair: torch.Tensor, ctx: Rigid, ctx_t: torch.Tensor, tgt: Rigid,
                tgt_t: torch.Tensor, frame_time_ps: torch.Tensor, delta_t_ps: torch.Tensor, res_mask: torch.Tensor,
                window: int | None = None) -> dict:
        """Block-causal pass over L context and L target frames (one pass trains all L targets).

        Args:
            single: [B, N, c_s_in] and pair: [B, N, N, c_z_in] frozen features.
            ctx: Rigid [B, L, N] (A) clean frames + contextual noise at diffusion time ctx_t [B, L] (tau).
            tgt: Rigid [B, L, N] (A) noisy frames at diffusion time tgt_t [B, L] in [0, 1].
            frame_time_ps: [B, L] physical time of frame l since the trajectory start (shared by ctx l and tgt l).
            delta_t_ps: [B] stride between consecutive frames (ps). res_mask: [B, N] (1 = real residue).
            window: if set, each frame sees only the `window` most recent context frames (see block_causal_mask).
        Returns:
            dict(pred_rigids=Rigid [B, L, N] x0 prediction for every target frame (A),
                 single=[B, L, N, c_s] final target singles[, step_log_std=[B, L, N, 2] with step_std_init]
                 [, step_modes=[B, L, N, r] with step_modes]
                 [, step_precision=[B, L, 3N, 3N] (A^-2) with step_elastic]).
            The denoiser's x0 is `SE3Diffuser.x0_estimate` of this.
        Target l depends only on context frames < l and on target l itself.
        """
        b, n_frames, n = tgt.shape
        if ctx.shape != tgt.shape or ctx_t.shape != (b, n_frames) or tgt_t.shape != (b, n_frames):
            raise ValueError(f"ctx/tgt must be Rigid [B, L, N] with ctx_t/tgt_t [B, L]; got ctx {tuple(ctx.shape)}, "
                             f"tgt {tuple(tgt.shape)}, ctx_t {tuple(ctx_t.shape)}, tgt_t {tuple(tgt_t.shape)}")
        if frame_time_ps.shape != (b, n_frames) or delta_t_ps.shape != (b,) or res_mask.shape != (b, n):
            raise ValueError(f"expected frame_time_ps [B, L] = {(b, n_frames)}, delta_t_ps [B], res_mask [B, N]; got "
                             f"{tuple(frame_time_ps.shape)}, {tuple(delta_t_ps.shape)}, {tuple(res_mask.shape)}")
        _check_times(torch.cat([ctx_t, tgt_t], dim=1), frame_time_ps, delta_t_ps)
        s0, z0 = self._embed_static(single, pair, res_mask)
        layout = BlockCausalLayout(n_frames, n, res_mask.bool(), window)  # block-causal S x T, no token mask
        previous_ctx = Rigid.cat([ctx[:, :1], ctx[:, :-1]], dim=1)  # frame l-1 of context l (frame 0: itself)
        tgt_anchor = tgt if self.target_anchor == "self" else Rigid.cat([tgt[:, :1], ctx[:, :-1]], dim=1)
        if self.extrapolation is not None:
            displacements = window_displacements(ctx.trans, self.history_extrapolation, window)
            if self.history_coupling == "anchor":  # target 0 has no displacement: its anchor stays itself
                tgt_anchor = self._shifted(tgt_anchor, z0[:, None], displacements, res_mask)
        ctx_anchor = previous_ctx if self.context_motion else ctx
        pred, s, z, _ = self._denoise(s0, z0, Rigid.cat([ctx, tgt], dim=1), Rigid.cat([ctx_anchor, tgt_anchor], dim=1),
                                      Rigid.cat([ctx, tgt_anchor], dim=1), torch.cat([ctx_t, tgt_t], dim=1),
                                      frame_time_ps.repeat(1, 2), delta_t_ps, res_mask, layout)
        pred, s, z = pred[:, n_frames:], s[:, n_frames:], z[:, n_frames:]
        if self.extrapolation is not None and self.history_coupling != "anchor":
            pred = self._shifted(pred, s if self.history_coupling == "residue" else z, displacements, res_mask)
        return self._outputs(pred, s, res_mask)

    def _shifted(self, rigid: Rigid, features: torch.Tensor, displacements: torch.Tensor,
                 res_mask: torch.Tensor) -> Rigid:
        """Rigid [B, ..., N] with its translations moved by the filtered displacements d [B, ..., K, N, 3] (A; zero
        where a frame is missing): sum_k c_ik d_ik with c from singles [B, ..., N, c_s] (`residue`), or
        sum_jk w_ijk d_jk / N_real with w from a pair state [B, ..., N, N, c_z] (`pair`, `anchor`; leading dims may
        broadcast). Padding (res_mask [B, N] = 0) neither moves nor moves others."""
        mask = res_mask.to(displacements.dtype).reshape(res_mask.shape[0], *([1] * (displacements.dim() - 4)),
                                                        res_mask.shape[1])  # [B, ..., N]
        weights = self.extrapolation(features).to(displacements.dtype)
        if self.history_coupling == "residue":
            shift = torch.einsum("...nk,...knc->...nc", weights * mask[..., None], displacements)
        else:
            pairs = mask[..., :, None] * mask[..., None, :] / mask.sum(-1, keepdim=True)[..., None]  # [B, ..., N, N]
            shift = torch.einsum("...ijk,...kjc->...ic", weights * pairs[..., None], displacements)
        return Rigid(rigid.rots, rigid.trans + shift.to(rigid.trans.dtype))

    def _outputs(self, pred: Rigid, single: torch.Tensor, res_mask: torch.Tensor) -> dict:
        out = {"pred_rigids": pred, "single": single}
        if self.step_std is not None:  # >= fp32 (under autocast the head runs in bf16); clamped to 1e-3..20 A / rad
            log_std = self.step_std(single)
            out["step_log_std"] = log_std.to(geometry_dtype(log_std.dtype)).clamp(-7.0, 3.0)
        if self.step_modes is not None:  # padding gets no mode weight, so it never couples to real residues
            modes = self.step_modes(single) * self.step_mode_scale
            mask = res_mask.to(modes.dtype).reshape(res_mask.shape[0], *([1] * (modes.dim() - 3)), res_mask.shape[1], 1)
            out["step_modes"] = (modes * mask).to(geometry_dtype(modes.dtype))
        if self.step_log_stiffness is not None:
            out["step_precision"] = self._step_precision(out["pred_rigids"].trans, out["step_log_std"], res_mask)
        return out

    def _step_precision(self, ca: torch.Tensor, log_std: torch.Tensor, res_mask: torch.Tensor) -> torch.Tensor:
        """diag(1/s^2) + H [..., 3N, 3N] (A^-2) from predicted CA positions [..., N, 3] (A): contact springs between
        real residues closer than the cutoff (sigmoid switch 1 A wide, so the law is smooth in the prediction) and
        bond springs between real chain neighbours (i, i + 1)."""
        real = res_mask.to(ca.dtype).reshape(res_mask.shape[0], *([1] * (ca.dim() - 3)), res_mask.shape[1])
        pairs = real[..., :, None] * real[..., None, :]  # [..., N, N]
        n = ca.shape[-2]
        neighbours = torch.ones(n - 1, dtype=ca.dtype, device=ca.device)
        bonded = torch.diag_embed(neighbours, 1) + torch.diag_embed(neighbours, -1)  # [N, N]
        contact, bond = self.step_log_stiffness.exp().to(ca.dtype).unbind()
        springs = (contact * torch.sigmoid(self.step_elastic_cutoff - torch.cdist(ca, ca)) + bond * bonded) * pairs
        hess = anm_hessian(ca, springs)
        inv_var = torch.exp(-2 * log_std[..., 0])  # [..., N]
        return hess + torch.diag_embed(inv_var.repeat_interleave(3, dim=-1))

    # --- inference ----------------------------------------------------------------------------------------------
    def init_cache(self, single: torch.Tensor, pair: torch.Tensor, res_mask: torch.Tensor,
                   delta_t_ps: torch.Tensor, window: int | None = None, max_frames: int | None = None
                   ) -> KVCache | StaticKVCache:
        """Empty cache for B trajectories of one protein: projects the frozen features once.

        single [B, N, c_s_in], pair [B, N, N, c_z_in] (an expanded view of one protein's features is fine),
        res_mask [B, N], delta_t_ps [B] (the rollout stride), window = K most recent frames or None (all).
        Features expanded from one protein (batch stride 0) are projected once and shared by the B samples: the
        projected pair [N, N, c_z] would otherwise be held B times. With max_frames (the most frames the rollout
        will hold) the cache is a StaticKVCache: preallocated slots, the same tensor shapes at every step, for
        `compile_frame_pass`.
        """
        b = res_mask.shape[0]
        if single.stride(0) == 0 and pair.stride(0) == 0:  # one protein's features expanded over the samples
            s0, z0 = self._embed_static(single[:1], pair[:1], res_mask[:1])
            s0, z0 = s0.expand(b, *s0.shape[1:]), z0.expand(b, *z0.shape[1:])  # shared, not copied
        else:
            s0, z0 = self._embed_static(single, pair, res_mask)
        if delta_t_ps.shape != (res_mask.shape[0],):
            raise ValueError(f"delta_t_ps must be [B] = ({res_mask.shape[0]},), got {tuple(delta_t_ps.shape)}")
        recent = self.history_extrapolation + 1 if self.history_extrapolation else 0  # translations to hold
        if max_frames is not None:
            attention = self.blocks[0].st_attention
            return StaticKVCache(s0, z0, res_mask, delta_t_ps, self.n_blocks, attention.n_heads, attention.c_hidden,
                                 window, max_frames, recent_frames=recent)
        return KVCache(s0, z0, res_mask, delta_t_ps, self.n_blocks, window, recent_frames=recent)

    def frame_pass(self, s0: torch.Tensor, z0: torch.Tensor, frame: Rigid, anchor: Rigid, start: Rigid,
                   t: torch.Tensor, frame_time_ps: torch.Tensor, delta_t_ps: torch.Tensor, res_mask: torch.Tensor,
                   attn_mask: torch.Tensor | None, past_kv: list[tuple[torch.Tensor, torch.Tensor] | None] | None,
                   past_times: torch.Tensor | None
                   ) -> tuple[Rigid, torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """One frame Rigid [B, N], seen from `anchor` and updated from `start`, through the trunk against held keys
        and values (`cache.past_kv()`). A function of its tensor arguments only, with no data-dependent branch, so
        torch.compile can capture it whole (`compile_frame_pass`). Returns x0 prediction Rigid [B, N] (A), singles
        [B, N, c_s], the final pair state [B, N, N, c_z] and the frame's per-block keys/values [B, H, N, C]."""
        pred, s, z, kvs = self._denoise(s0, z0, frame.unsqueeze(1), anchor.unsqueeze(1), start.unsqueeze(1),
                                        t[:, None], frame_time_ps[:, None], delta_t_ps, res_mask, attn_mask, past_kv,
                                        past_times)
        return pred[:, 0], s[:, 0], z[:, 0], kvs

    def compile_frame_pass(self, device: torch.device, max_shapes: int) -> Callable[..., Any]:
        """`frame_pass` through torch.compile: on CUDA with mode "reduce-overhead" (the step is captured as a CUDA
        graph and replayed, removing the per-kernel launch cost that bounds paper-scale rollouts), elsewhere the
        default mode (fused CPU kernels). Static shapes; `max_shapes` (how many the cache will show) lifts dynamo's
        recompile limit so no shape falls back to eager."""
        import torch._dynamo

        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, max_shapes)
        mode = "reduce-overhead" if device.type == "cuda" else "default"
        return torch.compile(self.frame_pass, mode=mode, dynamic=False, fullgraph=True)

    def _single_frame(self, cache: KVCache | StaticKVCache, frame: Rigid, anchor: Rigid, start: Rigid,
                      t: torch.Tensor, frame_time_ps: torch.Tensor, frame_pass: Callable[..., Any] | None
                      ) -> tuple[Rigid, torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """One frame Rigid [B, N] against every held frame and itself, through `frame_pass` (eager unless a
        compiled one is given; the eager path also checks the times, which a compiled one cannot without a sync)."""
        b, n = cache.res_mask.shape
        if frame.shape != (b, n) or t.shape != (b,) or frame_time_ps.shape != (b,):
            raise ValueError(f"expected frame Rigid [B, N] = {(b, n)}, t [B] and frame_time_ps [B]; got "
                             f"{tuple(frame.shape)}, {tuple(t.shape)}, {tuple(frame_time_ps.shape)}")
        if frame_pass is None:
            _check_times(t, frame_time_ps, cache.delta_t_ps)
            frame_pass = self.frame_pass
        return frame_pass(cache.static_single, cache.static_pair, frame, anchor, start, t, frame_time_ps,
                          cache.delta_t_ps, cache.res_mask, cache.attention_mask(), cache.past_kv(),
                          cache.frame_times)

    def step(self, cache: KVCache | StaticKVCache, frame: Rigid, t: torch.Tensor, frame_time_ps: torch.Tensor,
             frame_pass: Callable[..., Any] | None = None) -> dict:
        """Denoise one noisy frame given the cached context (the cache is not modified).

        Args:
            frame: Rigid [B, N] (A) at diffusion time t [B]; frame_time_ps [B] its physical time; frame_pass: a
            compiled `frame_pass` (None: eager).
        Returns:
            dict(pred_rigids=Rigid [B, N] x0 prediction (A), single=[B, N, c_s][, step_log_std [B, N, 2]]); equal
            to the full forward's target l when the cache holds context frames 0..l-1.
        """
        use_previous = self.target_anchor == "previous" and cache.last_frame is not None
        anchor = cache.last_frame if use_previous else frame
        if self.extrapolation is not None:
            displacements = cached_displacements(cache.recent_trans, self.history_extrapolation, frame.trans)
            if self.history_coupling == "anchor":
                anchor = self._shifted(anchor, cache.static_pair, displacements, cache.res_mask)
        pred, s, z, _ = self._single_frame(cache, frame, anchor, anchor, t, frame_time_ps, frame_pass)
        if self.extrapolation is not None and self.history_coupling != "anchor":
            pred = self._shifted(pred, s if self.history_coupling == "residue" else z, displacements, cache.res_mask)
        return self._outputs(pred, s, cache.res_mask)

    def append(self, cache: KVCache | StaticKVCache, frame: Rigid, tau: torch.Tensor, frame_time_ps: torch.Tensor,
               frame_pass: Callable[..., Any] | None = None) -> None:
        """Run the context pass of a finished frame (re-noised to diffusion time tau [B]) and cache its keys/values.

        frame: Rigid [B, N] (A); frame_time_ps: [B]. Computes exactly the full forward's context frame.
        """
        seen_from = cache.last_frame if self.context_motion and cache.last_frame is not None else frame
        _, _, _, kvs = self._single_frame(cache, frame, seen_from, frame, tau, frame_time_ps, frame_pass)
        cache.push(kvs, frame, frame_time_ps)


def window_displacements(ctx_trans: torch.Tensor, k_max: int, window: int | None) -> torch.Tensor:
    """Per target l the displacements x_{l-k} - x_{l-k-1}, k = 1..k_max, of the context translations [B, L, N, 3]
    -> [B, L, k_max, N, 3] (A), zero where frame l-k-1 is before frame 0 or outside the window (frames l - window
    .. l - 1 are visible to target l)."""
    b, n_frames, n, _ = ctx_trans.shape
    steps = ctx_trans[:, 1:] - ctx_trans[:, :-1]  # [B, L-1, N, 3]: step j ends at context frame j + 1
    out = ctx_trans.new_zeros(b, n_frames, k_max, n, 3)
    limit = k_max if window is None else min(k_max, window - 1)
    for k in range(1, limit + 1):
        # target l >= k + 1 uses the step ending at frame l - k, i.e. steps[l - k - 1]
        out[:, k + 1:, k - 1] = steps[:, :n_frames - k - 1]
    return out


def cached_displacements(recent_trans: torch.Tensor | None, k_max: int, like: torch.Tensor) -> torch.Tensor:
    """The same for a cache's recent translations [B, M, N, 3] (oldest first; None = empty): [B, k_max, N, 3], the
    newest step first, zero beyond the held frames. `like` [B, N, 3] gives the shape, dtype and device."""
    out = like.new_zeros(like.shape[0], k_max, *like.shape[1:])
    if recent_trans is not None and recent_trans.shape[1] > 1:
        steps = (recent_trans[:, 1:] - recent_trans[:, :-1]).flip(1)[:, :k_max]  # newest first
        out[:, :steps.shape[1]] = steps.to(out.dtype)
    return out


def _check_times(t: torch.Tensor, frame_time_ps: torch.Tensor, delta_t_ps: torch.Tensor) -> None:
    if t.numel() and (t.min() < 0 or t.max() > 1):
        raise ValueError(f"diffusion time must lie in [0, 1], got range [{t.min().item()}, {t.max().item()}]")
    if frame_time_ps.numel() and frame_time_ps.min() < 0:
        raise ValueError(f"frame_time_ps must be >= 0 ps, got min {frame_time_ps.min().item()}")
    if delta_t_ps.numel() and delta_t_ps.min() <= 0:
        raise ValueError(f"delta_t_ps must be > 0 ps, got min {delta_t_ps.min().item()}")
