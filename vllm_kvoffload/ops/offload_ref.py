"""Reference of csrc_triton/offload.py: whole device blocks into host-pool slots.
kv5 [2, num_blocks, block_size, Hkv, D] (device cache view); host_kv
[num_slots, num_layers, 2, Hkv, block_size, D] in the model's dtype or fp8, or 4-bit rows of
D/2 + 4 bytes (``to_host``);
blocks and slots [n]."""

import torch

from vllm_kvoffload.ops.int4_ref import INT4, pack_int4_ref, split_rows, unpack_int4_ref
from vllm_kvoffload.ops.quantize_ref import FP8, FP8_MAX


def to_host(x: torch.Tensor, host_dtype: torch.dtype) -> torch.Tensor:
    """K/V as the host pool stores them: unchanged, or rounded to fp8 e4m3 (nearest even),
    saturating at +-448 (torch's own cast would give NaN past it), or packed as 4-bit rows
    (``int4_ref``: uint8, D/2 + 4 bytes per row)."""
    if host_dtype == FP8:
        return x.float().clamp(-FP8_MAX, FP8_MAX).to(host_dtype)
    if host_dtype == INT4:
        return pack_int4_ref(x)
    return x.to(host_dtype)


def from_host(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Pool rows back in ``dtype`` (4-bit rows unpacked)."""
    return unpack_int4_ref(x, dtype) if x.dtype == INT4 else x.to(dtype)


def store_blocks_ref(kv5: torch.Tensor, blocks: torch.Tensor, host_kv: torch.Tensor, layer: int,
                     slots: torch.Tensor, scales: torch.Tensor | None = None) -> None:
    """``scales``: a 4-bit pool's scales kept apart [S, L, 2, Hkv, bs] fp32 (host rows: the nibbles)."""
    tiles = kv5[:, blocks.long()].permute(1, 0, 3, 2, 4)  # [n, 2, Hkv, bs, D]
    rows = to_host(tiles, host_kv.dtype)
    s = slots.cpu().long()
    if scales is not None:
        rows, scale = split_rows(rows)
        scales[s.to(scales.device), layer] = scale.to(scales.device)
    host_kv[s, layer] = rows.to(host_kv.device)


def store_blocks_all_layers_ref(kv5s: list[torch.Tensor], blocks: torch.Tensor, host_kv: torch.Tensor,
                                slots: torch.Tensor, scales: torch.Tensor | None = None) -> None:
    """Every layer at once: kv5s[layer] -> host_kv[:, layer]."""
    for layer, kv5 in enumerate(kv5s):
        store_blocks_ref(kv5, blocks, host_kv, layer, slots, scales)


def keys_all_layers_ref(kv5s: list[torch.Tensor], blocks: torch.Tensor, layer0: int, num_layers: int) -> torch.Tensor:
    """Keys of ``blocks`` in layers layer0 .. layer0 + num_layers - 1: [num_layers, n, Hkv, bs, D]."""
    return torch.stack([kv5[0, blocks.long()].transpose(1, 2) for kv5 in kv5s[layer0:layer0 + num_layers]])
