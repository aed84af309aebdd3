#!/usr/bin/env python
"""Why the throughput benchmark's masses are all equal (CPU, a few seconds).

vLLM's `--load-format dummy` fills every floating-point weight, RMSNorm weights included, uniformly
in [-1e-3, 1e-3] (`initialize_single_dummy_weight`). This builds the first layer's queries and keys
of a Llama-3.1-8B-shaped model that way (hidden 4096, 32 query heads, 8 KV heads, head dim 128) for
a random context and prints the largest attention logit and how many distinct values each query
head's row holds: in fp16 (qlandmark-scalar's workspace logits) and after an fp32 softmax.

    python examples/dummy_weight_logits.py [--tokens 512] [--seed 0]

Only the first layer is built (deeper layers add terms of the same scale to the residual stream).
"""

import argparse

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=512, help="context length (default 512)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if a.tokens < 1:
        p.error(f"--tokens {a.tokens}: must be >= 1")
    g = torch.Generator().manual_seed(a.seed)

    def dummy(*shape):  # vLLM's dummy initialization
        return torch.rand(*shape, generator=g) * 2e-3 - 1e-3

    hidden, head_dim, n_q, n_kv = 4096, 128, 32, 8
    x = dummy(a.tokens, hidden)                                            # the tokens' embeddings
    xn = x / x.pow(2).mean(-1, keepdim=True).sqrt() * dummy(hidden)        # RMSNorm with a dummy weight
    q = (xn[-1:] @ dummy(hidden, n_q * head_dim)).view(n_q, head_dim)      # the last token's queries
    k = (xn @ dummy(hidden, n_kv * head_dim)).view(a.tokens, n_kv, head_dim)
    group = torch.arange(n_q) // (n_q // n_kv)
    logits = torch.einsum("hd,thd->ht", q, k[:, group]) / head_dim ** 0.5  # [query head, token]
    fp16 = max(len(torch.unique(row.half())) for row in logits)
    soft = max(len(torch.unique(torch.softmax(row, -1))) for row in logits)
    print(f"largest |logit| {logits.abs().max().item():.2e}; distinct values per row: {fp16} in fp16, "
          f"{soft} after an fp32 softmax ({a.tokens} tokens)")


if __name__ == "__main__":
    main()
