"""Split one step's batch into decode rows (ours) and the rest (vLLM's kernels)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from vllm.v1.attention.backend import CommonAttentionMetadata

from vllm_kvoffload.runtime import DecodeRow


@dataclass
class OffloadMetadata:
    num_decodes: int          # rows [0, num_decodes) decode one token each
    num_decode_tokens: int
    decode_rows: list[DecodeRow]
    prefill: Any | None       # the stock backend's metadata for the remaining rows


def count_leading_decodes(query_start_loc_cpu: torch.Tensor) -> int:
    """vLLM reorders the batch so one-token rows come first (reorder_batch_threshold=1)."""
    lens = (query_start_loc_cpu[1:] - query_start_loc_cpu[:-1]).tolist()
    n = 0
    while n < len(lens) and lens[n] == 1:
        n += 1
    return n


def slice_rows(cm: CommonAttentionMetadata, start: int) -> CommonAttentionMetadata:
    """The rows [start, num_reqs) of ``cm`` as metadata of their own."""
    tok = int(cm.query_start_loc_cpu[start])
    per_row = ("is_prefilling", "seq_lens_cpu_upper_bound", "req_idx", "dcp_local_seq_lens",
               "dcp_local_seq_lens_cpu_upper_bound", "encoder_seq_lens", "encoder_seq_lens_cpu")
    changes = {
        "query_start_loc": cm.query_start_loc[start:] - cm.query_start_loc[start],
        "query_start_loc_cpu": cm.query_start_loc_cpu[start:] - tok,
        "seq_lens": cm.seq_lens[start:],
        "num_reqs": cm.num_reqs - start,
        "num_actual_tokens": cm.num_actual_tokens - tok,
        "block_table_tensor": cm.block_table_tensor[start:],
        "slot_mapping": cm.slot_mapping[tok:],
    }
    if cm.positions is not None:
        changes["positions"] = cm.positions[tok:]
    for name in per_row:
        value = getattr(cm, name, None)
        if value is not None:
            changes[name] = value[start:]
    return dataclasses.replace(cm, **changes)
