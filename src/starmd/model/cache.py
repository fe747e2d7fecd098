"""KVCache: what autoregressive rollout keeps between frames - per layer, the S x T attention keys/values of the
singles of every (re-noised) context frame, and nothing per frame for pairs.

Memory is 2 x n_blocks x B x N x L x (n_heads * c_hidden) x dtype bytes: O(N L d), versus O(N^2 L c_z) had the
per-frame pair states been cached. The static (frozen) features are projected once and held here too, but they do
not grow with L and are reported separately (`static_nbytes`); so are the last appended frame (the next target's
anchor, O(N)), the translations of the last few appended frames (O(K N), for `model.history_extrapolation`) and the
held frames' times (O(L), for the relative-time bias).

`StaticKVCache` holds the same in preallocated slots so that every step sees tensors of the same shapes, which is
what torch.compile and CUDA graphs need (`rollout.compile`).
"""

from __future__ import annotations

import math

import torch

from starmd.geometry import Rigid
from starmd.model.attention import residue_attention_mask


def kv_cache_nbytes(n_blocks: int, n_heads: int, c_hidden: int, n_res: int, n_frames: int, batch: int = 1,
                    dtype: torch.dtype = torch.float32) -> int:
    """Analytic size of a KVCache: 2 (K, V) x n_blocks x B x N x L x (n_heads x c_hidden) x dtype bytes."""
    return 2 * n_blocks * batch * n_res * n_frames * n_heads * c_hidden * _itemsize(dtype)


def pair_cache_nbytes(n_blocks: int, c_z: int, n_res: int, n_frames: int, batch: int = 1,
                      dtype: torch.dtype = torch.float32) -> int:
    """What caching every frame's pair state would cost (the design STAR-MD avoids): n_blocks x B x N^2 x L x c_z."""
    return n_blocks * batch * n_res * n_res * n_frames * c_z * _itemsize(dtype)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


class _HeldProtein:
    """What both caches hold besides keys/values: the protein's projected static inputs, its residue mask and
    stride, the window, the latest appended frame and the attention mask built once per push."""

    def __init__(self, static_single: torch.Tensor, static_pair: torch.Tensor, res_mask: torch.Tensor,
                 delta_t_ps: torch.Tensor, window: int | None, recent_frames: int = 0) -> None:
        if window is not None and window < 1:
            raise ValueError(f"{type(self).__name__} window must be a positive number of frames or None, got {window}")
        if recent_frames < 0:
            raise ValueError(f"{type(self).__name__} recent_frames must be >= 0, got {recent_frames}")
        self.static_single = static_single  # [B, N, c_s]
        self.static_pair = static_pair  # [B, N, N, c_z]
        self.res_mask = res_mask  # [B, N]
        self.delta_t_ps = delta_t_ps  # [B]
        self.window = window
        self.frames_seen = 0  # frames ever appended (>= n_frames when a window drops old ones)
        self.last_frame: Rigid | None = None  # [B, N]: the latest appended (re-noised) frame, the next target's anchor
        # translations of the most recent appended frames, oldest first, at most recent_frames (and the window);
        # 0 = none held (a model without history_extrapolation)
        self.recent_frames = recent_frames if window is None else min(recent_frames, window)
        self.recent_trans: torch.Tensor | None = None  # [B, M, N, 3]
        self._mask: torch.Tensor | None = None  # attention mask for the held frames, built once per push

    @property
    def n_res(self) -> int:
        return self.res_mask.shape[1]

    def static_nbytes(self) -> int:
        """Bytes of the once-per-protein projected singles and pair (constant in L)."""
        return sum(t.untyped_storage().nbytes() for t in (self.static_single, self.static_pair))

    def _pushed(self, frame: Rigid) -> None:
        """Bookkeeping after a frame's keys/values are stored."""
        self.last_frame = frame.detach()
        if self.recent_frames:
            trans = self.last_frame.trans[:, None]
            held = trans if self.recent_trans is None else torch.cat([self.recent_trans, trans], dim=1)
            self.recent_trans = held[:, -self.recent_frames:].clone()  # own exact storage
        self.frames_seen += 1
        self._mask = None


class KVCache(_HeldProtein):
    """Keys/values [B, H, L_held * N, C] per diffusion block (frame-major tokens), plus the protein's static inputs.

    Built by `StarMD.init_cache`, read by `StarMD.step` (never modified there) and grown by `StarMD.append`. With
    `window` = K only the K most recent frames are held (sliding-window attention).
    """

    def __init__(self, static_single: torch.Tensor, static_pair: torch.Tensor, res_mask: torch.Tensor,
                 delta_t_ps: torch.Tensor, n_blocks: int, window: int | None = None, recent_frames: int = 0) -> None:
        super().__init__(static_single, static_pair, res_mask, delta_t_ps, window, recent_frames)
        # attention needs a mask only when some residue is padded; checked once here, not at every step
        self.masked = not bool(res_mask.bool().all())
        self.keys: list[torch.Tensor | None] = [None] * n_blocks  # each [B, H, L_held * N, C]
        self.values: list[torch.Tensor | None] = [None] * n_blocks
        self.frame_times: torch.Tensor | None = None  # [B, L_held] physical times of the held frames (ps)

    @property
    def n_frames(self) -> int:
        """Frames currently held."""
        return 0 if self.keys[0] is None else self.keys[0].shape[2] // self.n_res

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(keys, values) of block i, each [B, H, L_held * N, C], or None while empty."""
        return None if self.keys[i] is None else (self.keys[i], self.values[i])

    def past_kv(self) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Per block the held (keys, values), each [B, H, L_held * N, C], or None while empty."""
        return [self.layer(i) for i in range(len(self.keys))]

    def attention_mask(self) -> torch.Tensor | None:
        """Mask [B, 1, N, L_held N + N] (True = may attend) of a query frame over the held tokens and its own, or
        None when nothing is padded (every token visible: SDPA keeps its fused kernels). Built once per push."""
        if not self.masked:
            return None
        if self._mask is None:
            key_valid = torch.cat([self.res_mask.repeat(1, self.n_frames), self.res_mask], dim=1)  # [B, T]
            allowed = torch.ones(self.n_res, key_valid.shape[1], dtype=torch.bool, device=key_valid.device)
            self._mask = residue_attention_mask(allowed, self.res_mask, key_valid)
        return self._mask

    def push(self, kvs: list[tuple[torch.Tensor, torch.Tensor]], frame: Rigid, frame_time_ps: torch.Tensor) -> None:
        """Append one frame's per-block (keys, values) [B, H, N, C], the frame itself (Rigid [B, N]) and its time
        [B]; drop the oldest frame beyond the window."""
        if len(kvs) != len(self.keys):
            raise ValueError(f"KVCache holds {len(self.keys)} blocks, got keys/values for {len(kvs)}")
        keep = None if self.window is None else self.window * self.n_res
        for i, (k, v) in enumerate(kvs):
            self.keys[i] = self._grow(self.keys[i], k.detach(), keep)
            self.values[i] = self._grow(self.values[i], v.detach(), keep)
        times = frame_time_ps[:, None] if self.frame_times is None else torch.cat([self.frame_times,
                                                                                   frame_time_ps[:, None]], 1)
        self.frame_times = times if self.window is None else times[:, -self.window:].clone()  # own exact storage
        self._pushed(frame)

    @staticmethod
    def _grow(held: torch.Tensor | None, new: torch.Tensor, keep: int | None) -> torch.Tensor:
        """Concatenate along tokens and keep the last `keep`; the result owns exactly sized storage (no view may
        pin a larger buffer, since nbytes is measured on storages)."""
        out = new.clone(memory_format=torch.contiguous_format) if held is None else torch.cat([held, new], dim=2)
        if keep is not None and out.shape[2] > keep:
            out = out[:, :, -keep:].clone(memory_format=torch.contiguous_format)
        return out

    def nbytes(self) -> int:
        """Bytes allocated for the cached keys/values (sum of their storages)."""
        return sum(t.untyped_storage().nbytes() for t in self.keys + self.values if t is not None)


class StaticKVCache(_HeldProtein):
    """The KVCache contract in preallocated frame slots: keys/values [B, H, S N, C] per block, the slots' frame times
    [B, S] and a key mask [B, 1, 1, S N + N] marking filled slots (and the query frame's own real residues).

    Every step sees the same shapes until the slots grow, so a compiled step is captured once per slot count. With a
    window K the slots are a ring of K frames (attention does not depend on key order, so a frame overwrites the
    oldest); without one they start at `first_slots` and double when full, up to `max_frames`: a rollout of F frames
    shows about log2(F / first_slots) shapes and attends over at most twice the held frames (empty slots are masked:
    exactly zero weight). Slot buffers are allocated at the first push, in the dtype of the keys (bf16 under
    autocast); until then the cache holds zero slots, still as tensors, so a compiled call never sees None.
    """

    def __init__(self, static_single: torch.Tensor, static_pair: torch.Tensor, res_mask: torch.Tensor,
                 delta_t_ps: torch.Tensor, n_blocks: int, n_heads: int, c_hidden: int, window: int | None,
                 max_frames: int, first_slots: int = 8, recent_frames: int = 0) -> None:
        super().__init__(static_single, static_pair, res_mask, delta_t_ps, window, recent_frames)
        if max_frames < 1:
            raise ValueError(f"StaticKVCache max_frames must be >= 1, got {max_frames}")
        self.n_blocks = n_blocks
        self.max_slots = min(window, max_frames) if window is not None else max_frames
        self.first_slots = min(first_slots, self.max_slots) if window is None else self.max_slots
        b = res_mask.shape[0]
        empty = static_single.new_zeros(b, n_heads, 0, c_hidden)
        self.keys: list[torch.Tensor] = [empty] * n_blocks  # each [B, H, S N, C]
        self.values: list[torch.Tensor] = [empty] * n_blocks
        self.frame_times = delta_t_ps.new_zeros(b, 0)  # [B, S] (empty slots: 0, masked)
        self.slot_valid = torch.zeros(b, 0, dtype=torch.bool, device=res_mask.device)  # [B, S N] filled, real

    @property
    def n_slots(self) -> int:
        return self.frame_times.shape[1]

    @property
    def n_frames(self) -> int:
        """Frames currently held."""
        return min(self.frames_seen, self.n_slots)

    def shape_count(self) -> int:
        """How many distinct slot counts this cache can show (zero included): what a compiled step is captured for."""
        return 2 + max(0, math.ceil(math.log2(self.max_slots / self.first_slots)))

    def past_kv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per block (keys, values) of every slot."""
        return list(zip(self.keys, self.values))

    def attention_mask(self) -> torch.Tensor:
        """[B, 1, 1, S N + N] bool: filled slots' real residues, then the query frame's real residues (a padded query
        sees real keys only; its output is discarded)."""
        if self._mask is None:
            self._mask = torch.cat([self.slot_valid, self.res_mask.bool()], dim=1)[:, None, None, :]
        return self._mask

    def push(self, kvs: list[tuple[torch.Tensor, torch.Tensor]], frame: Rigid, frame_time_ps: torch.Tensor) -> None:
        """Write one frame's per-block (keys, values) [B, H, N, C], frame (Rigid [B, N]) and time [B] into its slot:
        the next free one (doubling the slots when full) or, with a window, the oldest."""
        if len(kvs) != self.n_blocks:
            raise ValueError(f"StaticKVCache holds {self.n_blocks} blocks, got keys/values for {len(kvs)}")
        if self.window is None and self.frames_seen >= self.max_slots:
            raise ValueError(f"StaticKVCache is full: max_frames = {self.max_slots} frames already held")
        if self.n_slots == 0:
            self._allocate(kvs, self.first_slots)
        elif self.window is None and self.frames_seen == self.n_slots:
            self._allocate(kvs, min(2 * self.n_slots, self.max_slots))
        slot = self.frames_seen % self.n_slots
        n = self.n_res
        for held, new in zip(self.keys + self.values, [k for k, _ in kvs] + [v for _, v in kvs]):
            held[:, :, slot * n:(slot + 1) * n].copy_(new)
        self.frame_times[:, slot] = frame_time_ps
        self.slot_valid[:, slot * n:(slot + 1) * n] = self.res_mask.bool()
        self._pushed(frame)

    def _allocate(self, kvs: list[tuple[torch.Tensor, torch.Tensor]], slots: int) -> None:
        """(Re)allocate `slots` frame slots, keeping what is held in the first slots."""
        k0 = kvs[0][0]
        b, h, n, c = k0.shape
        old = (self.keys + self.values, self.frame_times, self.slot_valid, self.n_slots)
        self.keys = [k0.new_zeros(b, h, slots * n, c) for _ in kvs]
        self.values = [k0.new_zeros(b, h, slots * n, c) for _ in kvs]
        self.frame_times = self.delta_t_ps.new_zeros(b, slots)
        self.slot_valid = torch.zeros(b, slots * n, dtype=torch.bool, device=k0.device)
        held_bufs, times, valid, held = old
        if held:
            for new, prev in zip(self.keys + self.values, held_bufs):
                new[:, :, :held * n].copy_(prev)
            self.frame_times[:, :held] = times
            self.slot_valid[:, :held * n] = valid

    def nbytes(self) -> int:
        """Bytes allocated for the key/value slots (sum of their storages; filled or not)."""
        return sum(t.untyped_storage().nbytes() for t in self.keys + self.values)
