#!/usr/bin/env python
"""GPU cost of every scorer at one realistic decode step: batched scoring (the fused Triton
path each scorer takes on CUDA) against the same scorer's torch path, and the cost of
summarizing a 32K prefill. Needs torch + triton and a CUDA GPU, not vLLM:

    python examples/gpu_scorers.py            # OUT=dir also writes $OUT/scorers.json

Step (defaults, one layer): B=16 requests of 32K cold tokens, Hq=32, Hkv=8, D=128, block 16
(Llama-3.1-8B's attention shape, vLLM's GPU block size). Times: CUDA events, median of --reps,
L2 flushed before each. "HBM GB/s" counts the summary bytes of every cold token once, the
bytes a fused kernel must read; "x exact-topk" is the time against exact-topk's kernel on
bf16 keys in the same run. The fused result is checked against the torch path (relative L2
error of the masses).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

from gpu_kernels import timeit  # noqa: E402

from vllm_kvoffload.ops import triton_kernels  # noqa: E402
from vllm_kvoffload.scorers import available, create_scorer  # noqa: E402
from vllm_kvoffload.scorers.qlandmark import CODES, VEC, gaussian_codebook, hadamard  # noqa: E402
from vllm_kvoffload.scorers.base import KVGeometry, Scorer, SoftmaxScorer  # noqa: E402


def median_ms(fn, reps: int, flush: torch.Tensor) -> float:
    return 1e3 * timeit(fn, reps, flush)  # examples/gpu_kernels.py's timer (L2 flushed, median)


def torch_path(scorer: Scorer):
    """The scorer's batched scoring without its fused kernel (what the GPU ran before it)."""
    return scorer.torch_mass if isinstance(scorer, SoftmaxScorer) else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--hq", type=int, default=32)
    p.add_argument("--hkv", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--context", type=int, default=32768, help="cold tokens per request")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--scorers", nargs="+", default=available())
    a = p.parse_args()
    dev = torch.device("cuda")
    g = KVGeometry(a.hkv, a.hq, a.head_dim, a.block_size, torch.bfloat16)
    nblk = a.context // a.block_size
    S = a.batch * nblk
    gen = torch.Generator(device=dev).manual_seed(0)
    keys = (torch.randn(S, a.hkv, a.block_size, a.head_dim, device=dev, generator=gen) * 2).bfloat16()
    keys[..., :4] *= 6  # outlier channels, as real keys have
    query = torch.randn(a.batch, a.hq, a.head_dim, device=dev, generator=gen).bfloat16()
    slots = torch.randperm(S, device=dev, generator=gen).view(a.batch, nblk).int()
    lens = torch.full((a.batch,), nblk * a.block_size, dtype=torch.int32, device=dev)
    scale = a.head_dim ** -0.5
    flush = torch.empty(64 << 20, dtype=torch.int8, device=dev)
    rows = []
    base_ms = None
    for name in ["exact-topk", *[n for n in a.scorers if n != "exact-topk"]]:
        scorer = create_scorer(name, g)
        one = keys[:nblk]  # one request's prefill
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        t_sum = median_ms(lambda: scorer.summarize(one), max(3, a.reps // 4), flush)
        peak_sum = (torch.cuda.max_memory_allocated() - before) / 2**20
        summaries = torch.cat([scorer.summarize(keys[i:i + nblk]) for i in range(0, S, nblk)])  # prefill by prefill
        torch.cuda.synchronize()
        fused = lambda: scorer.score_batched(query, summaries, slots, lens, scale)  # noqa: E731
        ms = median_ms(fused, a.reps, flush)
        base_ms = base_ms or ms
        row = {"scorer": name, "fused_ms": ms, "x_exact_topk": ms / base_ms,
               "summary_bytes_per_token_head": scorer.summary_bytes_per_token() / a.hkv,
               "hbm_gb_s": scorer.summary_bytes_per_token() * a.batch * a.context / ms / 1e6,
               "summarize_32k_ms": t_sum, "summarize_32k_peak_mib": peak_sum}
        if name == "qlandmark":  # tile sweep: tokens per loop step x warps
            q_rot = query.float() @ hadamard(a.head_dim, dev)
            cb = gaussian_codebook(VEC, CODES, device=dev)
            row["tile_sweep_ms"] = {  # codebook held by the program (local) or gathered per code (global)
                f"{'local' if loc else 'global'} {bn}x{w}": median_ms(
                    lambda: triton_kernels.qlandmark_mass(q_rot, summaries, cb, slots, lens, scale, block_n=bn,
                                                          num_warps=w, local_cb=loc), a.reps, flush)
                for loc in (True, False) for bn in (16, 32, 64) for w in (4, 8)}
        ref = torch_path(scorer)
        if ref is not None:
            try:
                row["torch_ms"] = median_ms(lambda: ref(query, summaries, slots, lens, scale), max(3, a.reps // 4),
                                            flush)
                m, r = fused().float(), ref(query, summaries, slots, lens, scale).float()
                row["rel_err_vs_torch"] = ((m - r).norm() / r.norm()).item()
            except torch.OutOfMemoryError as err:
                row["torch_ms"] = f"OOM: {str(err)[:80]}"
            torch.cuda.empty_cache()
        if name == "lrqk":  # the SVD route that the Gram/eigh summary replaced
            k = one.float()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            row["summarize_svd_32k_ms"] = median_ms(lambda: torch.linalg.svd(k, full_matrices=False), 3, flush)
            row["summarize_svd_32k_peak_mib"] = (torch.cuda.max_memory_allocated() - before) / 2**20
        rows.append(row)
        print(json.dumps(row), flush=True)
    device = torch.cuda.get_device_name()
    out = {"device": device, "command": "python examples/gpu_scorers.py " + " ".join(sys.argv[1:]),
           "shape": vars(a), "results": rows}
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "scorers.json").write_text(json.dumps(out, indent=1))
    print(f"\n{device}: one layer, B={a.batch} x {a.context} cold tokens, Hq={a.hq}, Hkv={a.hkv}, "
          f"D={a.head_dim}, block {a.block_size}")
    for r in rows:
        if "tile_sweep_ms" in r:
            print("qlandmark tile sweep (tokens x warps: ms):", {k: round(v, 3) for k, v in r["tile_sweep_ms"].items()})
    print("| scorer | fused ms | x exact-topk | torch ms | rel err | B/token/head | HBM GB/s | summarize 32K ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        tm = r.get("torch_ms", "")
        tm = f"{tm:.2f}" if isinstance(tm, float) else tm
        err = f"{r['rel_err_vs_torch']:.1e}" if "rel_err_vs_torch" in r else ""
        extra = f" (SVD: {r['summarize_svd_32k_ms']:.1f})" if "summarize_svd_32k_ms" in r else ""
        extra += f", peak {r['summarize_32k_peak_mib']:.0f} MiB"
        print(f"| {r['scorer']} | {r['fused_ms']:.3f} | {r['x_exact_topk']:.2f} | {tm} | {err} | "
              f"{r['summary_bytes_per_token_head']:.1f} | {r['hbm_gb_s']:.0f} | {r['summarize_32k_ms']:.2f}{extra} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
