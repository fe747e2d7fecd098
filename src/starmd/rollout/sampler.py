"""Autoregressive rollout (STAR-MD, DESIGN.md section 4): one frame at a time, each by reverse SE(3) diffusion against
the context of the frames before it; a finished frame is re-noised to diffusion time tau (contextual noise) before it
enters the context, as the context frames were during training.

Order of random draws (one torch.Generator per rollout, so a seed fixes every trajectory): contextual noise of the
start frame; then per frame: the prior sample, one draw per reverse step, the CA restraint's perturbation (with
`rollout.ca_restraint`), the peptide restraint's (with `rollout.peptide_restraint`), the contextual noise of the
finished frame.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Protocol

import torch
from tqdm import tqdm

from starmd.diffusion import SE3Diffuser
from starmd.geometry import Rigid
from starmd.model.network import StarMD
from starmd.rollout.config import RolloutConfig
from starmd.rollout.context import CachedContext, Context, RecomputedContext
from starmd.rollout.peptide import PeptideChain, condition_on_peptide_bonds
from starmd.rollout.trace import condition_on_ca_bonds

_PS_PER_NS = 1000.0
_S_PER_DAY = 86400.0


@dataclass(frozen=True)
class Rollout:
    rotations: torch.Tensor  # [S, F, N, 3, 3]
    translations: torch.Tensor  # [S, F, N, 3] Angstrom
    time_ps: torch.Tensor  # [F]: delta_t, 2 delta_t, ... after the start frame
    wall_s: float
    peak_cache_bytes: int  # 0 for the recomputed (cache-free) reference


def time_grid(steps: int, t_min: float, spacing: str = "linear") -> list[float]:
    """Diffusion times at which the network is evaluated: steps points from 1 down to t_min (just [1.0] for 1),
    equally spaced (`linear`) or geometric (`log`: as many steps in [t_min, 10 t_min] as in [0.1, 1], where a
    linear grid of 20 has one step below 0.06 and the step between frames is resolved only there)."""
    if steps == 1:
        return [1.0]
    if spacing == "log":
        return torch.logspace(0.0, math.log10(t_min), steps, dtype=torch.float64).tolist()
    return torch.linspace(1.0, t_min, steps, dtype=torch.float64).tolist()


def centred(frames: Rigid) -> Rigid:
    """Subtract each structure's CA centroid ([..., N]): the frames the network was trained on are centred."""
    return Rigid(frames.rots, frames.trans - frames.trans.mean(dim=-2, keepdim=True))


def make_context(model: StarMD, single: torch.Tensor, pair: torch.Tensor, n_samples: int, delta_t_ps: float,
                 window: int | None, use_cache: bool, compiled: bool = False, max_frames: int | None = None
                 ) -> Context:
    """Context for n_samples trajectories of one protein (features [N, c_s], [N, N, c_z] shared by expansion);
    `compiled` (with max_frames, the most frames it will hold) is the rollout.compile fast path."""
    n = single.shape[0]
    dtype, device = single.dtype, single.device
    args = (single.expand(n_samples, *single.shape), pair.expand(n_samples, *pair.shape),
            torch.ones(n_samples, n, dtype=dtype, device=device),
            torch.full((n_samples,), delta_t_ps, dtype=dtype, device=device), window)
    if not use_cache:
        if compiled:
            raise ValueError("rollout.compile needs the KV cache (the recomputed context is the eager reference)")
        return RecomputedContext(model, *args)
    return CachedContext(model, *args, compiled=compiled, max_frames=max_frames)


def denoise_frame(context: Context, diffuser: SE3Diffuser, frame_time_ps: float, shape: tuple[int, int],
                  cfg: RolloutConfig, generator: torch.Generator, dtype: torch.dtype, device: torch.device,
                  autocast: Callable[[], contextlib.AbstractContextManager], chain: PeptideChain | None = None
                  ) -> Rigid:
    """Reverse diffusion of one new frame Rigid [B, N] from the prior at t = 1 to the x0 prediction at t_min; with
    `rollout.ca_restraint`, its translations are then conditioned on the CA-CA bonds of `chain`, and with
    `rollout.peptide_restraint` its rotations on the peptide bonds."""
    for key in ("ca_restraint", "peptide_restraint"):
        if getattr(cfg, key) > 0 and chain is None:
            raise ValueError(f"rollout.{key} needs the protein's residue types and bonds (a PeptideChain)")
    b = shape[0]
    x = diffuser.sample_ref(shape, generator, dtype=dtype, device=device)
    frame_time = torch.full((b,), frame_time_ps, dtype=dtype, device=device)
    ts = time_grid(cfg.steps, cfg.t_min, cfg.time_grid)
    for i, t in enumerate(ts):
        with autocast():
            out = context.denoise(x, torch.full((b,), t, dtype=dtype, device=device), frame_time)
        if cfg.reverse == "ancestral":  # down the grid, then a last draw of x0 itself (its mean unless Var is known)
            pred, var = diffuser.x0_law(out, x, t, follow_chain=cfg.chain_transport)
            pred = pred.to(dtype)
            x0_var = None if var is None else (var[0].to(dtype), var[1].to(dtype))
            x = frame = diffuser.reverse_ancestral(x, pred, t, ts[i + 1] if i + 1 < len(ts) else 0.0, generator,
                                                   x0_var=x0_var, follow_chain=cfg.chain_transport)
            continue
        frame = diffuser.x0_estimate(out, x, t).to(dtype)
        if i + 1 == len(ts):
            break
        rot_score = diffuser.calc_rot_score(x.rots, frame.rots, t)
        trans_score = diffuser.calc_trans_score(x.trans, frame.trans, t)
        x = diffuser.reverse(x, rot_score, trans_score, t, t - ts[i + 1], generator)
    log_std = out.get("step_log_std")  # the step law's widths (A, rad), where the network predicts them
    if cfg.ca_restraint > 0:
        trans_std = None if log_std is None else log_std[..., 0].exp().to(dtype)
        frame = condition_on_ca_bonds(frame, chain, cfg.ca_restraint, trans_std, generator)
    if cfg.peptide_restraint > 0:
        rot_std = None if log_std is None else log_std[..., 1].exp().to(dtype)
        frame = condition_on_peptide_bonds(frame, chain, cfg.peptide_restraint, rot_std, generator)
    return centred(frame)


@dataclass(frozen=True)
class Generated:
    """Frame `index` (1..F) of every trajectory, and frame index - 1 exactly as it entered the context (re-noised to
    tau), which is what a resumed rollout re-appends to rebuild the KV cache."""

    index: int
    frame: Rigid  # [B, N] centred x0 prediction (Angstrom)
    entered: Rigid  # [B, N]


@dataclass(frozen=True)
class ResumePoint:
    """Where an interrupted rollout stopped: after frame `frames_done` was yielded, before its contextual noise."""

    frames_done: int
    history: Iterable[Rigid]  # frames 0..frames_done - 1 as they entered the context, each [B, N], in order
    last: Rigid  # frame frames_done [B, N], as yielded
    generator_state: torch.Tensor  # the rollout generator's state at that point


def iter_frames(context: Context, diffuser: SE3Diffuser, start: Rigid, cfg: RolloutConfig,
                generator: torch.Generator,
                autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                resume: ResumePoint | None = None, chain: PeptideChain | None = None) -> Iterator[Generated]:
    """Yield the F generated frames in order; start Rigid [B, N] (Angstrom) enters the context first.

    Every frame, the start included, is re-noised to tau before `context.append` (skipped when tau = 0: the
    contextual-noise ablation). Frame l has physical time l * delta_t (the start is frame 0). With `resume`, the
    context is rebuilt by re-appending the saved frames (one network pass each, no diffusion) and the generator
    restored, so the frames that follow are those the uninterrupted rollout would have produced. `chain`: the
    protein's peptide bonds, for `rollout.peptide_restraint`.
    """
    b, n = start.shape
    dtype, device = start.dtype, start.device

    def append(noisy: Rigid, index: int) -> None:
        with autocast():
            context.append(noisy, torch.full((b,), cfg.tau, dtype=dtype, device=device),
                           torch.full((b,), index * cfg.delta_t_ps, dtype=dtype, device=device))

    def enter(frame: Rigid, index: int) -> Rigid:
        noisy = diffuser.contextual_noise(frame, cfg.tau, generator) if cfg.tau > 0 else frame
        append(noisy, index)
        return noisy

    if resume is None:
        entered, first = enter(centred(start), 0), 1
    else:
        for index, noisy in enumerate(resume.history):
            append(noisy.to(device=device, dtype=dtype), index)
        generator.set_state(resume.generator_state)
        entered = enter(resume.last.to(device=device, dtype=dtype), resume.frames_done)
        first = resume.frames_done + 1
    for f in range(first, cfg.n_frames + 1):
        frame = denoise_frame(context, diffuser, f * cfg.delta_t_ps, (b, n), cfg, generator, dtype, device, autocast,
                              chain)
        yield Generated(f, frame, entered)
        entered = enter(frame, f)


def resolve_device(name: str, key: str = "rollout.device") -> torch.device:
    """`auto` is cuda when torch sees a GPU, else cpu; `key` names the config setting in the error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{key} is 'cuda' but no CUDA device is available (use 'auto' or 'cpu')")
    return torch.device(name)


class FrameSink(Protocol):
    def add(self, generated: Generated, generator: torch.Generator) -> None:
        """Take frame `generated.index` (called in order; the generator is in the state a resume restores)."""

    def flush(self, generator: torch.Generator) -> None:
        """Called once generation ends, finished or stopped early."""


@dataclass
class MemorySink:
    """Keeps every frame on the CPU: for tests and benchmarks (the CLI streams to disk, `starmd.rollout.stream`)."""

    rotations: list[torch.Tensor] = field(default_factory=list)  # each [B, N, 3, 3]
    translations: list[torch.Tensor] = field(default_factory=list)  # each [B, N, 3]

    def add(self, generated: Generated, generator: torch.Generator) -> None:
        self.rotations.append(generated.frame.rots.cpu())
        self.translations.append(generated.frame.trans.cpu())

    def flush(self, generator: torch.Generator) -> None:
        pass  # nothing is buffered


@dataclass(frozen=True)
class RunStats:
    frames_done: int  # < n_frames when `stop` ended the run early
    wall_s: float
    peak_cache_bytes: int  # 0 for the recomputed (cache-free) reference


def generate(model: StarMD, diffuser: SE3Diffuser, single: torch.Tensor, pair: torch.Tensor, start: Rigid,
             cfg: RolloutConfig, sink: FrameSink, *, use_cache: bool = True, label: str = "rollout",
             resume: ResumePoint | None = None, stop: Callable[[], bool] = lambda: False,
             aatype: torch.Tensor | None = None) -> RunStats:
    """n_samples trajectories of F frames from one start frame Rigid [N], with features single [N, c_s] and pair
    [N, N, c_z], handed to `sink` frame by frame; aatype [N] (OpenFold order) is needed by
    `rollout.peptide_restraint` (bonds where the start frame has them). Runs on the model's device and dtype; bf16
    autocast only on CUDA. Shows a tqdm bar (frames, ns generated per trajectory, ns/day summed over the batch) and
    prints a summary line to stderr. `stop()` is asked after every frame; when it says True, generation ends there
    (the caller saves)."""
    param = next(model.parameters())
    dtype, device = param.dtype, param.device
    single, pair = single.to(device=device, dtype=dtype), pair.to(device=device, dtype=dtype)
    window = cfg.context_window or None
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    bf16 = cfg.bf16 and device.type == "cuda"

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    starts = start.to(device=device, dtype=dtype).unsqueeze(0).expand(cfg.n_samples, start.shape[0])
    chain = None if aatype is None else PeptideChain.from_start(start, aatype)
    first = done = 0 if resume is None else resume.frames_done
    t0 = time.perf_counter()
    with torch.no_grad():
        context = make_context(model, single, pair, cfg.n_samples, cfg.delta_t_ps, window, use_cache, cfg.compile,
                               cfg.n_frames + 1)
        bar = tqdm(total=cfg.n_frames, initial=first, desc=label, unit="frame", disable=not cfg.progress_bar,
                   file=sys.stderr)
        for generated in iter_frames(context, diffuser, starts, cfg, generator, autocast, resume, chain):
            sink.add(generated, generator)
            ns = generated.index * cfg.delta_t_ps / _PS_PER_NS
            rate = (generated.index - first) * cfg.delta_t_ps / _PS_PER_NS / (time.perf_counter() - t0)
            bar.set_postfix(ns=f"{ns:.3g}", ns_per_day=f"{rate * cfg.n_samples * _S_PER_DAY:.3g}")
            bar.update()
            done = generated.index
            if done < cfg.n_frames and stop():
                break
        sink.flush(generator)
        bar.close()
    wall = time.perf_counter() - t0
    peak = context.peak_nbytes
    total_ns = (done - first) * cfg.delta_t_ps / _PS_PER_NS
    print(f"{label}: {done - first} frames x {cfg.n_samples} samples ({total_ns:.4g} ns each) in {wall:.1f} s "
          f"({total_ns * cfg.n_samples * _S_PER_DAY / max(wall, 1e-9):.4g} ns/day); peak KV cache {peak} bytes",
          file=sys.stderr)
    return RunStats(done, wall, peak)


def run_rollout(model: StarMD, diffuser: SE3Diffuser, single: torch.Tensor, pair: torch.Tensor, start: Rigid,
                cfg: RolloutConfig, *, use_cache: bool = True, label: str = "rollout",
                aatype: torch.Tensor | None = None) -> Rollout:
    """`generate` into memory: the whole rollout as tensors (tests, benchmarks)."""
    sink = MemorySink()
    stats = generate(model, diffuser, single, pair, start, cfg, sink, use_cache=use_cache, label=label,
                     aatype=aatype)
    return Rollout(torch.stack(sink.rotations, dim=1), torch.stack(sink.translations, dim=1),
                   cfg.delta_t_ps * torch.arange(1, cfg.n_frames + 1, dtype=torch.float64), stats.wall_s,
                   stats.peak_cache_bytes)
