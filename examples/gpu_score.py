#!/usr/bin/env python
"""GPU sweep of the per-token scoring kernels at the engine's decode shapes: tile width, warps
and pipeline stages, for exact-topk's kernel (csrc_triton/score.py) on bf16 keys and on
exact-topk-fp8's packed fp8 summaries, and for qlandmark-scalar's 2-bit summaries
(csrc_triton/score_summary.py::qscalar_mass, also over its level decodings). Every configuration is checked against the torch reference (relative
error <= 1e-2; no NaN), then timed with CUDA events (median of --reps, L2 flushed before
each). Needs torch + triton and a CUDA GPU:

    python examples/gpu_score.py           # OUT=dir also writes $OUT/score.json

Shapes: Llama-3.1-8B's attention (32 query heads, 8 KV heads of 128), block 16, 32K context
minus the 288 resident tokens, one layer, 16 and 32 requests.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gpu_kernels import HBM_PEAK, rel_err, save_rows, sweep_setup, timeit  # noqa: E402  (timeit: median of reps, L2 flushed)

HQ, HKV, D, BS = 32, 8, 128, 16
COLD = 32768 - 288


def inputs(B, gen):
    """(query, {key kind: (keys, key_scale)}, cold_slots, cold_lens) laid out as the engine's;
    the "2bit" kind holds (qlandmark-scalar, its summaries)."""
    nblk = -(-COLD // BS)
    slots = torch.randperm(B * nblk + 7, device="cuda", generator=gen)[: B * nblk].view(B, nblk).int()
    lens = torch.full((B,), COLD, dtype=torch.int32, device="cuda") - torch.arange(B, device="cuda", dtype=torch.int32) * 5
    q = torch.randn(B, HQ, D, device="cuda", generator=gen).to(torch.bfloat16)
    keys = (torch.randn(B * nblk + 7, HKV, BS, D, device="cuda", generator=gen) * 2).to(torch.bfloat16)
    from vllm_kvoffload.scorers import create_scorer
    from vllm_kvoffload.scorers.base import KVGeometry
    fp8_scorer = create_scorer("exact-topk-fp8", KVGeometry(HKV, HQ, D, BS, torch.bfloat16))
    fp8 = fp8_scorer.keys_and_scales(fp8_scorer.summarize(keys))  # the engine's packed summaries
    q2 = create_scorer("qlandmark-scalar", KVGeometry(HKV, HQ, D, BS, torch.bfloat16))
    return q, {"bf16": (keys, None), "fp8": fp8, "2bit": (q2, q2.summarize(keys))}, slots, lens


def qscalar_runs(q, scorer, summaries, slots, lens, scale, configs, decodes, layouts):
    """qlandmark-scalar: its torch reference, and (config, decode, layout, HBM bytes, run) to time. A layout
    is (epilogue, logits dtype): the heads on the dot's 16 rows ("rows16"), or token-major (tokens on the
    dot's M, each head in a lane of its own: "tokens")."""
    from vllm_kvoffload.scorers.qlandmark import UNIFORM_STEP
    from vllm_kvoffload.ops.triton_kernels import qscalar_mass
    ref = scorer.torch_mass(q, summaries, slots, lens, scale)
    n = int(lens.sum())  # summaries, logits written and read, mass written (score.bytes_touched's count)
    q_rot = scorer.rotated(q)
    runs = []
    for (block, warps, stages), dec, (epilogue, logits) in itertools.product(configs, decodes, layouts):
        dtype = {"fp32": torch.float32, "fp16": torch.float16}[logits]
        nbytes = int(n * scorer.summary_bytes_per_token()) + n * HQ * 2 * dtype.itemsize + n * HKV * 4
        kw = dict(block_n=block, num_warps=warps, num_stages=stages, decode=dec, token_major=epilogue == "tokens",
                  logits_dtype=dtype)
        runs.append(((block, warps, stages), dec, (epilogue, logits), nbytes,
                     lambda kw=kw: qscalar_mass(q_rot, summaries, UNIFORM_STEP, slots, lens, scale, **kw)))
    return ref, runs


def finish_sweep(a, gen, flush) -> int:
    """score.finish_mass alone: each configuration against torch's softmax of the same workspace
    (relative error <= 1e-5), timed as above. Returns the number of failures."""
    from vllm_kvoffload.ops.triton_kernels import load
    score = load("score")
    rows, failed = [], 0
    for B in a.requests:
        nblk = -(-COLD // BS)
        n_max = nblk * BS
        lens = torch.full((B,), COLD, dtype=torch.int32, device="cuda") - torch.arange(B, device="cuda", dtype=torch.int32) * 5
        chunk = score.plan(B, HKV, n_max, torch.device("cuda"), 128)
        NC = -(-n_max // chunk)
        logits = torch.randn(B, HQ, NC * chunk, device="cuda", generator=gen) * 3
        past = torch.arange(NC * chunk, device="cuda")[None, None, :] >= lens[:, None, None]
        logits = logits.masked_fill(past, float("-inf"))
        by_chunk = logits.view(B, HQ, NC, chunk)
        pm = by_chunk.amax(-1).clamp_min(-1e30)
        ps = torch.exp2(by_chunk - pm[..., None]).sum(-1)
        logits = logits[..., :n_max].contiguous()
        M = logits.amax(-1, keepdim=True)
        p = torch.exp2(logits - M)
        ref = (p / p.sum(-1, keepdim=True)).view(B, HKV, HQ // HKV, n_max).sum(2)
        valid = ~past[:, :, :n_max].expand(B, HKV, n_max)
        nbytes = int(lens.sum()) * (HQ * 4 + HKV * 4)
        for dot_rows, block, warps in itertools.product((True, False), a.finish_blocks, a.warps):
            run = lambda: score.finish_mass(logits, pm, ps, lens, HKV, chunk, block_n=block,  # noqa: E731
                                            num_warps=warps, dot_rows=dot_rows)
            out = run()
            err = rel_err(out[valid], ref[valid])
            ok = err <= 1e-5 and bool((out[~valid] == float("-inf")).all())
            failed += not ok
            t = timeit(run, a.reps, flush)
            rows.append(dict(B=B, dot_rows=dot_rows, block_n=block, warps=warps, time_us=t * 1e6, bytes=nbytes,
                             hbm_frac=nbytes / t / HBM_PEAK, rel_err=err, ok=ok))
            print(f"  B={B:<3} rows={'16' if dot_rows else 'G ':<3} block={block:<5} warps={warps} {t * 1e6:8.1f} us "
                  f"{nbytes / t / 1e9:7.0f} GB/s err {err:.1e} {'ok' if ok else 'FAIL'}", flush=True)
        del logits, p, ref
        torch.cuda.empty_cache()
    print(f"\n{torch.cuda.get_device_name()}: score.finish_mass per layer (us), 32K cold tokens per request; "
          f"{failed} failures")
    print(f"{'requests':<10}{'old (rows 16, 256, 4 warps)':>30}{'best':>12}  best (rows, block, warps)")
    for B in a.requests:
        rs = [r for r in rows if r["B"] == B]
        old = next((r for r in rs if r["dot_rows"] and r["block_n"] == 256 and r["warps"] == 4), None)
        best = min(rs, key=lambda r: r["time_us"])
        print(f"{B:<10}{(old['time_us'] if old else float('nan')):>30.1f}{best['time_us']:>12.1f}  "
              f"({'16' if best['dot_rows'] else 'G'}, {best['block_n']}, {best['warps']})")
    save_rows("score-finish.json", rows)
    return 1 if failed else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--requests", type=int, nargs="+", default=[16, 32])
    p.add_argument("--warps", type=int, nargs="+", default=[4, 8])
    p.add_argument("--stages", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--blocks", type=int, nargs="+", default=[32, 64, 128], help="BLOCK_N, tokens per tile")
    p.add_argument("--kinds", nargs="+", default=["bf16", "fp8", "2bit"], choices=["bf16", "fp8", "2bit"])
    p.add_argument("--decodes", type=int, nargs="+", default=[0, 1, 2, 3], choices=[0, 1, 2, 3],
                   help="qlandmark-scalar's level decodings (score_summary.qscalar_mass)")
    p.add_argument("--epilogues", nargs="+", default=["tokens"], choices=["rows16", "tokens"],
                   help="qlandmark-scalar's first pass: the heads on the dot's 16 rows, or token-major (tokens on "
                        "the dot's M, each head in a lane of its own)")
    p.add_argument("--logits", nargs="+", default=["fp16"], choices=["fp32", "fp16"],
                   help="qlandmark-scalar's workspace logits (what the second pass reads)")
    p.add_argument("--finish", action="store_true",
                   help="sweep only the second pass (score.finish_mass: rows padded to 16 or to the group, "
                        "tiles --finish-blocks, warps --warps) on a workspace of random log2 logits")
    p.add_argument("--finish-blocks", type=int, nargs="+", default=[256, 512, 1024])
    a = p.parse_args()
    gen, flush = sweep_setup("gpu_score.py", "tests/csrc_triton/test_triton_score.py")
    if a.finish:
        sys.exit(finish_sweep(a, gen, flush))
    from vllm_kvoffload.ops.score_ref import score_mass_ref
    from vllm_kvoffload.ops.triton_kernels import load
    score, score_summary = load("score"), load("score_summary")
    rows, failed = [], 0
    configs = list(itertools.product(a.blocks, a.warps, a.stages))
    for B in a.requests:
        q, by_kind, slots, lens = inputs(B, gen)
        scale = D ** -0.5
        for kind in a.kinds:
            keys, kscale = by_kind[kind]
            if kind == "2bit":
                ref, runs = qscalar_runs(q, keys, kscale, slots, lens, scale, configs, a.decodes,
                                         list(itertools.product(a.epilogues, a.logits)))
            else:
                ref = score_mass_ref(q, keys, kscale, slots, lens, scale)
                nbytes = score.bytes_touched(q, keys, kscale, lens)
                runs = [(c, None, None, nbytes, lambda c=c: score.score_mass(q, keys, kscale, slots, lens, scale,
                                                                             block_n=c[0], num_warps=c[1],
                                                                             num_stages=c[2])) for c in configs]
            for (block, warps, stages), dec, layout, nbytes, run in runs:
                try:
                    out = run()
                    torch.cuda.synchronize()
                except Exception as e:  # e.g. out of shared memory or registers for this tile
                    print(f"  B={B} {kind} block={block} warps={warps} stages={stages} decode={dec}: "
                          f"{type(e).__name__}: {str(e)[:120]}", flush=True)
                    continue
                valid = torch.isfinite(ref)
                err = rel_err(out[valid], ref[valid])
                ok = err <= 1e-2 and not out[valid].isnan().any().item()
                failed += not ok
                t = timeit(run, a.reps, flush)
                rows.append(dict(B=B, keys=kind, block_n=block, warps=warps, stages=stages, decode=dec, layout=layout,
                                 time_us=t * 1e6,
                                 bytes=nbytes, hbm_frac=nbytes / t / HBM_PEAK, rel_err=err, ok=ok))
                print(f"  B={B:<3}{kind:<5} block={block:<4} warps={warps} stages={stages} decode={dec} "
                      f"layout={'/'.join(layout) if layout else '-'} "
                      f"{t * 1e6:8.1f} us {nbytes / t / 1e9:7.0f} GB/s err {err:.1e} {'ok' if ok else 'FAIL'}", flush=True)
            del ref
        del q, by_kind
        torch.cuda.empty_cache()
    print(f"\n{torch.cuda.get_device_name()}: scoring one layer, 32K cold tokens per request (us); "
          f"the shipped default (score.DEFAULTS, score_summary.QSCALAR_DEFAULTS) against the best "
          f"configuration; {failed} failures")
    print(f"{'requests':<10}{'keys':<6}{'default':>48}{'best':>48}")
    for B in a.requests:
        for kind in a.kinds:
            rs = [r for r in rows if r["B"] == B and r["keys"] == kind]
            if not rs:
                continue
            if kind == "2bit":
                shipped = score_summary.QSCALAR_DEFAULTS
                epilogue = "tokens" if score_summary.QSCALAR_TOKEN_MAJOR else "rows16"
                logits = {torch.float32: "fp32", torch.float16: "fp16"}[score_summary.QSCALAR_LOGITS]
                default = next((r for r in rs if (r["block_n"], r["warps"], r["stages"], r["decode"]) == shipped[:4]
                                and r["layout"] == (epilogue, logits)), None)
            else:
                default = next((r for r in rs if (r["block_n"], r["warps"], r["stages"]) == score.DEFAULTS[kind]),
                               None)
            cell = lambda r: (f"{r['time_us']:7.1f} ({100 * r['hbm_frac']:.0f}% HBM) "  # noqa: E731
                              f"b{r['block_n']} w{r['warps']} s{r['stages']} d{r['decode']}"
                              f"{' ' + '/'.join(r['layout']) if r['layout'] else ''}") if r else "-"
            best = min(rs, key=lambda r: r["time_us"])
            print(f"{B:<10}{kind:<6}{cell(default):>48}{cell(best):>48}")
    save_rows("score.json", rows)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
