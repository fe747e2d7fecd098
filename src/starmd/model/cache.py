"""KVCache: what autoregressive rollout keeps between frames - per layer, the S x T attention keys/values of the
singles of every (re-noised) context frame, and nothing per frame for pairs.

Memory is 2 x n_blocks x B x N x L x (n_heads * c_hidden) x dtype bytes: O(N L d), versus O(N^2 L c_z) had the
per-frame pair states been cached. The static (frozen) features are projected once and held here too, but they do
not grow with L and are reported separately (`static_nbytes`); so are the last appended frame (the next target's
anchor, O(N)) and the held frames' times (O(L), for the relative-time bias).
"""

from __future__ import annotations

import torch

from starmd.geometry import Rigid


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


class KVCache:
    """Keys/values [B, H, L_held * N, C] per diffusion block (frame-major tokens), plus the protein's static inputs.

    Built by `StarMD.init_cache`, read by `StarMD.step` (never modified there) and grown by `StarMD.append`. With
    `window` = K only the K most recent frames are held (sliding-window attention).
    """

    def __init__(self, static_single: torch.Tensor, static_pair: torch.Tensor, res_mask: torch.Tensor,
                 delta_t_ps: torch.Tensor, n_blocks: int, window: int | None = None) -> None:
        if window is not None and window < 1:
            raise ValueError(f"KVCache window must be a positive number of frames or None, got {window}")
        self.static_single = static_single  # [B, N, c_s]
        self.static_pair = static_pair  # [B, N, N, c_z]
        self.res_mask = res_mask  # [B, N]
        # attention needs a mask only when some residue is padded; checked once here, not at every step
        self.masked = not bool(res_mask.bool().all())
        self.delta_t_ps = delta_t_ps  # [B]
        self.window = window
        self.keys: list[torch.Tensor | None] = [None] * n_blocks  # each [B, H, L_held * N, C]
        self.values: list[torch.Tensor | None] = [None] * n_blocks
        self.frames_seen = 0  # frames ever appended (>= n_frames when a window drops old ones)
        self.last_frame: Rigid | None = None  # [B, N]: the latest appended (re-noised) frame, the next target's anchor
        self.frame_times: torch.Tensor | None = None  # [B, L_held] physical times of the held frames (ps)

    @property
    def n_res(self) -> int:
        return self.res_mask.shape[1]

    @property
    def n_frames(self) -> int:
        """Frames currently held."""
        return 0 if self.keys[0] is None else self.keys[0].shape[2] // self.n_res

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(keys, values) of block i, each [B, H, L_held * N, C], or None while empty."""
        return None if self.keys[i] is None else (self.keys[i], self.values[i])

    def key_mask(self) -> torch.Tensor:
        """Residue mask of the held key tokens [B, L_held * N] (frame-major)."""
        return self.res_mask.repeat(1, self.n_frames)

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
        self.last_frame = frame.detach()
        self.frames_seen += 1

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

    def static_nbytes(self) -> int:
        """Bytes of the once-per-protein projected singles and pair (constant in L)."""
        return sum(t.untyped_storage().nbytes() for t in (self.static_single, self.static_pair))
