"""Triton GPU kernels of the offload decode path (see docs/kernels.md).

Each module holds the @triton.jit kernels and a thin dispatch function with the
signature of its pure-torch reference in ``vllm_kvoffload/ops/*_ref.py``:

* ``sparse_decode``: split-K paged decode attention over resident + selected tokens;
* ``score``: exact-topk scoring (softmax mass per KV head) from bf16/fp8 compact keys;
* ``quantize``: keys -> fp8 e4m3 with a per-(token, head) fp32 scale, and back;
* ``topk``: top-k per (request, KV head) by radix bisection on the fp32 bits;
* ``gather``: selected cold tokens from the pinned host pool (UVA kernel / copy engine).
* ``synthetic_ranks``: the GPU benchmark's synthetic ranking (redraw a share, add to the masses) in one pass.

Importing this package does not import triton; the submodules do.
"""
