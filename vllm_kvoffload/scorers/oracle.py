"""oracle: exact scores over the full-precision keys. Evaluation only: it keeps
as many key bytes on the device as no offloading at all, so it is the upper
bound every other scorer is compared with."""

import torch

from vllm_kvoffload.scorers import register
from vllm_kvoffload.scorers.exact_topk import ExactTopKScorer


@register
class OracleScorer(ExactTopKScorer):
    name = "oracle"

    def summary_spec(self):
        g = self.geometry
        return (g.num_kv_heads, g.block_size, g.head_dim), g.dtype

    def summarize(self, keys: torch.Tensor) -> torch.Tensor:
        return keys.clone()
