"""The STAR-MD network (issue 4): FrameEncoder -> [IPA -> S x T attention -> transition -> EdgeTransition ->
backbone update] x n_blocks, block-causal training mask and a singles-only KV cache for rollout."""

from starmd.model.attention import block_causal_frame_mask, block_causal_mask
from starmd.model.cache import KVCache, kv_cache_nbytes, pair_cache_nbytes
from starmd.model.network import StarMD, model_hparams

__all__ = ["StarMD", "model_hparams", "KVCache", "block_causal_mask", "block_causal_frame_mask", "kv_cache_nbytes", "pair_cache_nbytes"]
