#!/usr/bin/env python
"""GPU sweep of the sparse decode attention (csrc_triton/sparse_decode.py) at the engine's decode
shape: 32 requests, Llama-3.1-8B's heads (32 query, 8 KV, 128), block 16, the resident sink +
window (288 tokens, bf16, paged) and 983 selected tokens per KV head (the 3% budget of 32K), the
selections fp8 (an fp8 host pool, the engine's case) or bf16. Tokens per tile, warps, pipeline
stages are swept; every configuration is
checked against the torch reference (relative error <= 1e-2, no NaN), then timed with CUDA events
(median of --reps, L2 flushed). The ceiling: the bytes it must read (``bytes_touched``) at HBM
bandwidth, and a device-to-device copy of the same bytes in the same run.

    python examples/gpu_attention.py           # OUT=dir also writes $OUT/attention.json
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gpu_kernels import HBM_PEAK, rel_err, save_rows, sweep_setup, timeit  # noqa: E402

B, HQ, HKV, D, BS = 32, 32, 8, 128, 16
RESIDENT, K_SEL, COUNT = 288, 1024, 983


def inputs(gen, sel_dtype):
    """(query, paged KV cache, block table, resident lengths, sel_k, sel_v, counts) as the engine's."""
    dev = "cuda"
    blocks = -(-RESIDENT // BS)
    kv = torch.randn(2, B * blocks + 5, BS, HKV, D, device=dev, generator=gen).bfloat16()
    table = torch.randperm(B * blocks + 5, device=dev, generator=gen)[: B * blocks].view(B, blocks).int()
    res_lens = torch.full((B,), RESIDENT, dtype=torch.int32, device=dev)
    q = torch.randn(B, HQ, D, device=dev, generator=gen).bfloat16()
    sk = torch.randn(B, HKV, K_SEL, D, device=dev, generator=gen).to(sel_dtype)
    sv = torch.randn(B, HKV, K_SEL, D, device=dev, generator=gen).to(sel_dtype)
    counts = torch.full((B, HKV), COUNT, dtype=torch.int32, device=dev)
    return q, kv, table, res_lens, sk, sv, counts


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--blocks", type=int, nargs="+", default=[32, 64], help="BLOCK_N, tokens per tile")
    p.add_argument("--warps", type=int, nargs="+", default=[4, 8])
    p.add_argument("--stages", type=int, nargs="+", default=[2, 3])
    p.add_argument("--sel-dtypes", nargs="+", default=["fp8", "bf16"], choices=["fp8", "bf16"])
    p.add_argument("--label", default="", help="a name for this tree's rows (e.g. 'before')")
    a = p.parse_args()
    gen, flush = sweep_setup("gpu_attention.py", "tests/csrc_triton/test_triton_sparse_decode.py")
    from vllm_kvoffload.ops.sparse_decode_ref import sparse_decode_ref
    from vllm_kvoffload.ops.triton_kernels import load
    sd = load("sparse_decode")
    rows, failed = [], 0
    scale = D ** -0.5
    for name in a.sel_dtypes:
        q, kv, table, res_lens, sk, sv, counts = inputs(gen, torch.float8_e4m3fn if name == "fp8" else torch.bfloat16)
        ref = sparse_decode_ref(q, kv, table, res_lens, sk, sv, counts, scale)
        nbytes = sd.bytes_touched(q, kv, res_lens, sk, counts)
        src = torch.empty(nbytes // 2, dtype=torch.int8, device="cuda")
        dst = torch.empty_like(src)
        t_copy = timeit(lambda: dst.copy_(src), a.reps, flush)  # reads and writes nbytes in all
        rows.append(dict(label=a.label, sel=name, kind="device copy", time_us=t_copy * 1e6, bytes=nbytes))
        print(f"selections {name}: {nbytes / 1e6:.1f} MB touched; device copy of as many bytes {t_copy * 1e6:.1f} us")
        for block, warps, stages in itertools.product(a.blocks, a.warps, a.stages):
            out = torch.full_like(q, float("nan"))
            run = lambda: sd.sparse_decode(q, kv, table, res_lens, sk, sv, counts, scale, out=out,  # noqa: E731
                                           block_n=block, num_warps=warps, num_stages=stages)
            try:
                run()
                err = rel_err(out, ref)
                ok = err <= 1e-2 and not out.isnan().any().item()
            except Exception as e:  # a configuration that does not compile (shared memory): reported
                print(f"  block={block} warps={warps} stages={stages}: {type(e).__name__}: {e}")
                continue
            failed += not ok
            t = timeit(run, a.reps, flush)
            rows.append(dict(label=a.label, sel=name, kind="sparse_decode", block=block, warps=warps, stages=stages,
                             time_us=t * 1e6, bytes=nbytes, hbm=nbytes / t / HBM_PEAK, rel_err=err, ok=ok))
            print(f"  block={block:<3} warps={warps} stages={stages}  {t * 1e6:7.1f} us  "
                  f"{nbytes / t / HBM_PEAK:5.0%} of HBM  rel={err:.1e} {'ok' if ok else 'FAIL'}", flush=True)
    print(f"\n{torch.cuda.get_device_name()} {a.label}: sparse decode per layer (us), {B} requests, "
          f"{RESIDENT} resident + {COUNT} selected tokens per KV head; {failed} failed checks")
    print(f"{'selections':<12}{'device copy':>12}{'default':>10}{'best':>10}  best (block, warps, stages)")
    for name in a.sel_dtypes:
        rs = [r for r in rows if r["sel"] == name and r["kind"] == "sparse_decode"]
        if not rs:
            continue
        copy = next(r for r in rows if r["sel"] == name and r["kind"] == "device copy")
        default = next((r for r in rs if (r["block"], r["warps"], r["stages"]) == (64, 4, 2)), None)
        best = min(rs, key=lambda r: r["time_us"])
        print(f"{name:<12}{copy['time_us']:>12.1f}{(default['time_us'] if default else float('nan')):>10.1f}"
              f"{best['time_us']:>10.1f}  ({best['block']}, {best['warps']}, {best['stages']})"
              f"  {best['hbm']:.0%} of HBM")
    save_rows(f"attention{'-' + a.label if a.label else ''}.json", rows)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
