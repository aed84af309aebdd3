"""The batch's selection on the device (``select_cold_tokens_batched``: block granularity and top-p on
the batched path) against the per-request ``select_cold_tokens``, request by request."""

import pytest
import torch

from vllm_kvoffload.ops.select import select_cold_tokens, select_cold_tokens_batched

BS = 16


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("granularity, topp", [("block", None), ("token", 0.5), ("token", 0.9), ("token", None)])
def test_each_request_gets_what_the_per_request_selection_keeps(granularity, topp, device):
    gen = torch.Generator().manual_seed(0)
    for _ in range(100):
        B, Hkv = 3, 2
        cold_lens = torch.randint(0, 6, (B,), generator=gen) * BS  # whole blocks, some requests with none
        n_max = int(cold_lens.max()) + BS * int(torch.randint(0, 2, (1,), generator=gen))  # padded, as the plan's
        n_max = max(n_max, BS)
        mass = torch.rand(B, Hkv, n_max, generator=gen)
        mass = mass.masked_fill(torch.arange(n_max) >= cold_lens[:, None, None], float("nan"))  # never read
        budgets = torch.randint(1, 50, (B,), generator=gen)
        k = -(-int(budgets.max()) // 64) * 64
        idx, counts = select_cold_tokens_batched(mass.to(device), cold_lens.to(device), k, budgets.to(device),
                                                 granularity=granularity, block_size=BS, topp=topp, min_tokens=2)
        idx, counts = idx.cpu(), counts.cpu()
        assert idx.shape == (B, Hkv, k) and idx.dtype == counts.dtype == torch.int32
        for b in range(B):
            n = int(cold_lens[b])
            sel, valid = select_cold_tokens(mass[b, :, :n], int(budgets[b]), granularity=granularity,
                                            block_size=BS, topp=topp, min_tokens=2)
            for h in range(Hkv):
                kept = sorted(sel[h][valid[h]].tolist()) if sel.numel() else []
                c = int(counts[b, h])
                assert idx[b, h, :c].tolist() == kept and not idx[b, h, c:].any()
